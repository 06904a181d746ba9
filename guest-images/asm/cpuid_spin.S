# cpuid_spin: a guest that does nothing but ask CPUID, for the test that
# the exit trampoline's CPUID fast path (vmx::fast) cannot keep a guest
# from being preempted: those exits never reach the run loop, so only the
# VMX-preemption timer, counting across them, takes the CPU away. It runs
# 20 rounds of CPUID leaf 0 and prints `progress <k>` after each; beside
# the register loop of `spin`, both must get half the CPU.
#
# ferrovisor: load_address=0x100000 mode=long
.include "fv.inc"
.include "lib64.inc"

.equ ROUNDS, 20
# About 57 Bochs ticks an iteration with the fast path (6 guest
# instructions, 51 host): some 200,000 a round, two 10 ms slices at
# Bochs's 10 MHz TSC, as a round of `spin`.
.equ ROUND_ITERATIONS, 3500

    .text
    .globl _start
_start:
    cld
    # Interrupts on, as in `spin`: under Bochs a guest with IF=0 takes no
    # external-interrupt VM exits.
    sti
    mov rsp, STACK_TOP
    xor ebx, ebx
1:  mov esi, ROUND_ITERATIONS
2:  xor eax, eax
    push rbx
    cpuid
    pop rbx
    dec esi
    jnz 2b
    inc ebx
    PRINT "progress "
    mov eax, ebx
    call fv_put_dec
    PUTC '\n'
    cmp ebx, ROUNDS
    jb 1b
    EXIT 0
