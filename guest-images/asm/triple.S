# triple: a protected-mode guest that triple-faults. With an empty IDT,
# UD2's #UD cannot be delivered (#GP), nor can that #GP (#DF), nor the #DF:
# a triple fault (Intel SDM Vol. 3A, 6.15 "Exception and Interrupt
# Reference", Interrupt 8), which the hypervisor must turn into a stopped
# guest rather than a reset of the machine.
#
# ferrovisor: load_address=0x100000 mode=protected
.include "fv.inc"
.include "lib32.inc"

    .text
    .globl _start
_start:
    cld
    mov esp, STACK_TOP
    PRINT "about to triple fault\n"
    lidt [empty_idt]
    ud2
    PRINT "ESCAPED: no triple fault\n"
    EXIT 99

    .pushsection .text, 3
    .balign 8
# IDTR image: limit 0, so not even vector 0's gate lies inside it.
empty_idt:
    .word 0
    .long 0
    .popsection
