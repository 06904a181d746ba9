# /bin/rdtsc of the Linux guests' initramfs: prints the time-stamp counter
# in decimal and a newline, then exits 0. A static x86-64 Linux program
# with no libc, assembled and linked by xtask (xtask/src/linux.rs).
#
# /init prints `ferrovisor-linux: ready tsc <N>` with it. Under Bochs one
# TSC tick is one emulated instruction and the TSC starts at 0 at power-on,
# so natively N is the instructions since power-on; under Ferrovisor the
# guest's TSC starts at 0 when the hypervisor creates the guest, and the
# hypervisor logs the host TSC at that moment (`cargo xtask bench` adds
# the two).
.code64
.intel_syntax noprefix

.set SYS_WRITE, 1
.set SYS_EXIT, 60
.set STDOUT, 1

.text
.globl _start
_start:
    # RDTSC is not ordered against earlier instructions, which does not
    # matter at this resolution (and Bochs executes in order anyway).
    rdtsc
    shl rdx, 32
    or rax, rdx

    # Digits from the end of the buffer backwards: the newline first.
    lea rsi, [rip + buffer_end]
    dec rsi
    mov byte ptr [rsi], '\n'
    mov ecx, 10
1:
    xor edx, edx
    div rcx
    add dl, '0'
    dec rsi
    mov [rsi], dl
    test rax, rax
    jnz 1b

    lea rdx, [rip + buffer_end]
    sub rdx, rsi
    mov edi, STDOUT
    mov eax, SYS_WRITE
    syscall

    xor edi, edi
    mov eax, SYS_EXIT
    syscall

.bss
# 20 digits (2^64 - 1 has 20) and the newline.
buffer:
    .skip 21
buffer_end:
