# halt: a real-mode guest that halts with interrupts off. Nothing can wake
# it, so the hypervisor must stop it ("halted forever") rather than wait.
#
# ferrovisor: load_address=0x8000 mode=real
.include "fv.inc"
.include "lib16.inc"

    .text
    .globl _start
_start:
    cld
    mov sp, REAL_STACK_TOP
    PRINT "halting with interrupts off\n"
    cli
    hlt
    # Only an interrupt or NMI could get here, and none may be delivered.
    PRINT "ESCAPED: hlt returned\n"
    EXIT 99
