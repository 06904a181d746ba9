# counter: prints "counter: <n>" (n = 1, 2, 3, ...) on COM1 at every
# tenth interrupt of the PIT's channel 0, programmed for 50 ms (rate
# generator, divisor 59659 of 1193182 Hz), so every 500 ms, forever: a
# guest whose output shows
# whether it runs, for the console's pause and resume. The count lives in
# R13, which only the tick handler changes, so a register dump of the
# stopped guest shows the last number printed. Ticks the guest misses
# while it does not run are dropped by the PIT model, not caught up, so
# the count stops while the guest is paused and goes on by one after.
# The period is guest (TSC) time: under Bochs, whose clock skips ahead
# while every CPU halts, it passes far faster than wall-clock time (about
# 90 lines a wall-clock second beside two idle echo guests).
#
# ferrovisor: load_address=0x100000 mode=long
.include "fv.inc"
.include "lib64.inc"
.include "console64.inc"

# The 8254 (Intel 8254 datasheet, Control Word Format; PC wiring: channel
# 0's OUT is IRQ 0).
.equ PIT_CHANNEL0, 0x40
.equ PIT_CONTROL, 0x43
.equ PIT_C0_LOHI_MODE2, 0x34 # channel 0, LSB then MSB, mode 2, binary
.equ PIT_50MS, 59659        # 1193182 Hz * 0.05 s
.equ PIT_IRQ, 0
.equ TICKS_PER_LINE, 10

    .text
    .globl _start
_start:
    cld
    mov rsp, STACK_TOP
    xor r13d, r13d
    mov r14d, TICKS_PER_LINE
    mov al, PIT_IRQ
    lea rsi, [rip + on_tick]
    call idt_install
    PIC_INIT ~(1 << PIT_IRQ) & 0xFF
    mov ax, MCR_DTR_RTS << 8   # no UART interrupts
    call com1_init
    CON_PRINT "counter: ready, a line every 500 ms\r\n"
    mov al, PIT_C0_LOHI_MODE2
    out PIT_CONTROL, al
    mov al, PIT_50MS & 0xFF
    out PIT_CHANNEL0, al
    mov al, PIT_50MS >> 8
    out PIT_CHANNEL0, al
idle:
    sti
    hlt
    jmp idle

# The PIT's interrupt: every tenth, the next number; then the EOI (a
# tick that comes while the line is printed waits in the 8259). R14
# counts the ticks down to the next line.
on_tick:
    push rax
    push rsi
    dec r14
    jnz 1f
    mov r14d, TICKS_PER_LINE
    inc r13
    CON_PRINT "counter: "
    mov rax, r13
    call com1_put_dec
    CON_PRINT "\r\n"
1:
    mov al, PIC_EOI
    out PIC_MASTER, al
    pop rsi
    pop rax
    iretq
