# idle: halts with interrupts on, as an idle kernel does. No device can
# interrupt it yet, so it must block without costing CPU time or holding
# up the other guests, and be stopped once nothing else can run.
#
# ferrovisor: load_address=0x8000 mode=real
.include "fv.inc"
.include "lib16.inc"

    .text
    .globl _start
_start:
    cld
    mov sp, REAL_STACK_TOP
    PRINT "idling with interrupts on\n"
    sti
1:  hlt
    PRINT "woken up\n"
    jmp 1b
