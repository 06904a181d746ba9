# cpuid: the benchmark guest. Times, with RDTSC (which does not exit),
# N iterations of an empty loop, N CPUID round trips through the hypervisor
# and N byte writes to COM1's THR (each an I/O exit), and prints the
# averages: what one exit of each kind costs, the loop subtracted.
# Under Bochs one TSC tick is one emulated instruction.
#
# ferrovisor: load_address=0x100000 mode=long
.include "fv.inc"
.include "lib64.inc"

.equ N, 1000

# TSC dst: dst = the 64-bit TSC. LFENCE first, so every earlier instruction
# has completed before the counter is read (Intel SDM Vol. 2B, RDTSC).
.macro TSC dst
    lfence
    rdtsc
    shl rdx, 32
    or rax, rdx
    mov \dst, rax
.endm

    .text
    .globl _start
_start:
    cld
    mov rsp, STACK_TOP

    # (a) The loop alone: the same DEC/JNZ as the two loops below.
    TSC r12
    mov r9d, N
    .balign 16
1:  dec r9d
    jnz 1b
    TSC r13
    sub r13, r12                # r13 = empty loop ticks

    # (b) CPUID leaf 0: exits unconditionally (SDM Vol. 3C, 26.1.2).
    TSC r12
    mov r9d, N
    .balign 16
2:  xor eax, eax
    cpuid
    dec r9d
    jnz 2b
    TSC r14
    sub r14, r12                # r14 = CPUID loop ticks

    # (c) A byte to COM1's THR: an I/O exit each. No LSR polling inside the
    # timed loop; the dots form one console line with the newline after.
    TSC r12
    mov dx, COM1_THR
    mov al, '.'
    mov r9d, N
    .balign 16
3:  out dx, al
    dec r9d
    jnz 3b
    TSC r15
    sub r15, r12                # r15 = COM1 loop ticks
    PUTC '\n'

    PRINT "empty loop: "
    mov eax, N
    call fv_put_dec
    PRINT " iterations, average "
    mov rax, r13
    call per_iteration
    call fv_put_dec
    PRINT " ticks\n"

    PRINT "cpuid exit: "
    mov eax, N
    call fv_put_dec
    PRINT " round trips, average "
    mov rax, r14
    call loop_removed
    call per_iteration
    call fv_put_dec
    PRINT " ticks\n"

    PRINT "com1 write exit: "
    mov eax, N
    call fv_put_dec
    PRINT " round trips, average "
    mov rax, r15
    call loop_removed
    call per_iteration
    call fv_put_dec
    PRINT " ticks\n"

    PRINT "raw: empty "
    mov rax, r13
    call fv_put_dec
    PRINT " cpuid "
    mov rax, r14
    call fv_put_dec
    PRINT " com1 "
    mov rax, r15
    call fv_put_dec
    PUTC '\n'
    EXIT 0

# loop_removed: RAX -= the empty loop's ticks (R13), 0 if that would go
# below 0 (the TSC of another CPU, or noise, can make it).
loop_removed:
    sub rax, r13
    jae 1f
    xor eax, eax
1:  ret

# per_iteration: RAX /= N.
per_iteration:
    push rcx
    push rdx
    xor edx, edx
    mov ecx, N
    div rcx
    pop rdx
    pop rcx
    ret
