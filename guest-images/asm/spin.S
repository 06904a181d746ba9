# spin: a CPU-bound guest for the scheduler tests. It runs 20 rounds of a
# pure register loop (no VM exits, so only the VMX-preemption timer can
# take the CPU away) and prints `progress <k>` after each; three copies on
# one CPU show whether each gets a fair share.
#
# ferrovisor: load_address=0x100000 mode=long
.include "fv.inc"
.include "lib64.inc"

.equ ROUNDS, 20
# About 2 instructions an iteration: 200,000 Bochs ticks a round, two
# 10 ms slices at Bochs's 10 MHz TSC.
.equ ROUND_ITERATIONS, 100000

    .text
    .globl _start
_start:
    cld
    # Interrupts on, as an operating system runs. Nothing is ever delivered
    # to this guest, but under Bochs a guest with IF=0 takes no
    # external-interrupt VM exits (Bochs decides interrupt masking at VM
    # entry before it counts the CPU as in VMX non-root operation), so a
    # kick from another CPU would wait for the slice to end. Hardware
    # exits either way.
    sti
    mov rsp, STACK_TOP
    xor ebx, ebx
1:  mov ecx, ROUND_ITERATIONS
2:  dec ecx
    jnz 2b
    inc ebx
    PRINT "progress "
    mov eax, ebx
    call fv_put_dec
    PUTC '\n'
    cmp ebx, ROUNDS
    jb 1b
    EXIT 0
