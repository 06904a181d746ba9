# timer: arms the test timer device (ports 0xE0-0xE7, interrupt line 5,
# delivered as vector 0x25 by the trivial interrupt controller), halts with
# interrupts on, and must be woken by the injected interrupt: the halted
# vCPU waits blocked in the scheduler, its CPU free for others, until the
# timer's deadline. It checks that the handler ran once, that the device
# counted one firing, and that a second round works the same.
#
# ferrovisor: load_address=0x8000 mode=real
.include "fv.inc"
.include "lib16.inc"

.equ TIMER_ARM, 0xE0        # OUT: fire N * 1024 TSC ticks from now; IN: times fired
.equ TIMER_ACK, 0xE4        # OUT: lower the interrupt line
.equ TIMER_VECTOR, 0x25     # line 5 + the controller's base 0x20
.equ TIMER_UNITS, 200       # 204800 TSC ticks

    .text
    .globl _start
_start:
    cld
    mov sp, REAL_STACK_TOP
    # The real-mode interrupt vector table: offset, then segment 0.
    mov word ptr [TIMER_VECTOR * 4], offset on_timer
    mov word ptr [TIMER_VECTOR * 4 + 2], 0
    mov byte ptr [rounds], 0
round:
    mov byte ptr [fired], 0
    PRINT "arming the timer\n"
    mov eax, TIMER_UNITS
    out TIMER_ARM, eax
    sti
1:  hlt
    cmp byte ptr [fired], 0
    je 1b
    cli
    PRINT "woken by the timer interrupt\n"
    inc byte ptr [rounds]
    xor eax, eax
    in eax, TIMER_ARM
    movzx ebx, byte ptr [rounds]
    cmp eax, ebx
    jne miscount
    cmp byte ptr [rounds], 2
    jb round
    PRINT "two timer interrupts, each after a halt\n"
    EXIT 0
miscount:
    PRINT "the device's firing count does not match the rounds\n"
    EXIT 1

# The interrupt handler: acknowledge the device, note it.
on_timer:
    push eax
    xor eax, eax
    out TIMER_ACK, eax
    inc byte ptr [fired]
    pop eax
    iret

    .pushsection .text, 3
fired:
    .byte 0
rounds:
    .byte 0
    .popsection
