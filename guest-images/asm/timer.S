# timer: arms the test timer device (ports 0xE0-0xE7, interrupt line 5:
# ISA IRQ 5, which it routes through the 8259 pair it programs as a PC BIOS
# would, master vectors from 0x20, so vector 0x25), halts with
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
.equ TIMER_VECTOR, 0x25     # IRQ 5 + the master 8259's base 0x20
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
    # The 8259 pair: ICW1 (edge, cascade, ICW4 follows), ICW2 (vector
    # base), ICW3 (slave on IR2 / slave ID 2), ICW4 (8086 mode); then
    # every input masked but IRQ 5.
    mov al, 0x11
    out 0x20, al
    out 0xA0, al
    mov al, 0x20
    out 0x21, al
    mov al, 0x28
    out 0xA1, al
    mov al, 0x04
    out 0x21, al
    mov al, 0x02
    out 0xA1, al
    mov al, 0x01
    out 0x21, al
    out 0xA1, al
    mov al, 0xDF
    out 0x21, al
    mov al, 0xFF
    out 0xA1, al
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

# The interrupt handler: acknowledge the device, end the interrupt at the
# 8259 (non-specific EOI), note it.
on_timer:
    push eax
    xor eax, eax
    out TIMER_ACK, eax
    mov al, 0x20
    out 0x20, al
    inc byte ptr [fired]
    pop eax
    iret

    .pushsection .text, 3
fired:
    .byte 0
rounds:
    .byte 0
    .popsection
