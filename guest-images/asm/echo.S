# echo: a line echo on COM1, driven by its receive interrupt, for the
# serial console's tests (the code is echo.inc's, which says what it
# prints). Its marks: R12 = 0xFEEDC0DE12345678 for as long as it runs, and
# "FERROVISOR-MEM-1" at guest-physical 0x50000; echo2 has others.
#
# ferrovisor: load_address=0x100000 mode=long
.equ ECHO_R12, 0xFEEDC0DE12345678
.include "echo.inc"

    .pushsection .text, 2
echo_name:
    .asciz "echo"
echo_mark:
    .ascii "FERROVISOR-MEM-1"
    .popsection
