# echo2: echo.S with marks of its own, so that a test can tell which guest
# the console's input, register dump or memory dump reached: R12 =
# 0xFEEDC0DE87654321, "FERROVISOR-MEM-2" at guest-physical 0x50000.
#
# ferrovisor: load_address=0x100000 mode=long
.equ ECHO_R12, 0xFEEDC0DE87654321
.include "echo.inc"

    .pushsection .text, 2
echo_name:
    .asciz "echo2"
echo_mark:
    .ascii "FERROVISOR-MEM-2"
    .popsection
