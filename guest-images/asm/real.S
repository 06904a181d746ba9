# real: the smallest guest. Starts in real mode, prints one line through
# COM1 and exits with code 0.
#
# ferrovisor: load_address=0x8000 mode=real
.include "fv.inc"
.include "lib16.inc"

    .text
    .globl _start
_start:
    # Entered at 0x8000 with CS = DS = ES = SS = 0 (the flat loader takes
    # CS from bits 16..19 of the entry), so link-time addresses are offsets.
    cld
    mov sp, REAL_STACK_TOP
    PRINT "hello from real mode\n"
    EXIT 0
