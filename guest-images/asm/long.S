# long: a 64-bit guest that checks the hypervisor's side of long mode:
# console output through COM1 and through the FV_PRINT hypercall, the AVX
# (or, without AVX, SSE) registers across thousands of VM exits, and the
# hypervisor's CPUID signature leaf.
#
# ferrovisor: load_address=0x100000 mode=long
.include "fv.inc"
.include "lib64.inc"

.equ SIMD_REGS, 16
.equ XMM_BYTES, 16
.equ YMM_BYTES, 32
.equ HV_LEAF, 0x40000000

    # FV_PRINT's line, defined before its use so that its length is a
    # constant (an immediate) where it is used.
    .pushsection .text, 2
hypercall_line:
    .ascii "printed by hypercall\n"
.equ HYPERCALL_LINE_LEN, . - hypercall_line
    .popsection

    .text
    .globl _start
_start:
    cld
    mov rsp, STACK_TOP
    PRINT "hello from long mode\n"

    # FV_PRINT: the hypervisor reads the line straight from guest memory
    # (the identity map makes its address guest-physical).
    mov eax, FV_PRINT
    lea rbx, [rip + hypercall_line]
    mov ecx, HYPERCALL_LINE_LEN
    xor edx, edx
    vmcall
    test rax, rax
    jz 1f
    PRINT "FV_PRINT failed: "
    call fv_put_dec
    PUTC '\n'
1:
    # SSE first, which the AVX path needs as well (Intel SDM Vol. 3A,
    # 14.1.3 "Initialization of the SSE Extensions").
    mov rax, cr0
    and rax, ~(CR0_EM | CR0_TS)
    or rax, CR0_MP
    mov cr0, rax

    mov eax, 1
    xor ecx, ecx
    cpuid
    and ecx, CPUID1_ECX_XSAVE | CPUID1_ECX_AVX
    cmp ecx, CPUID1_ECX_XSAVE | CPUID1_ECX_AVX
    jne no_avx

    # AVX (SDM Vol. 1, 14.3 "Detection of Intel AVX Instructions"): XSAVE
    # enabled in CR4, then x87, SSE and AVX state enabled in XCR0.
    mov rax, cr4
    or rax, CR4_OSFXSR | CR4_OSXMMEXCPT | CR4_OSXSAVE
    mov cr4, rax
    xor ecx, ecx
    xor edx, edx
    mov eax, XCR0_X87 | XCR0_SSE | XCR0_AVX
    xsetbv

    .irp k, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    vmovdqu ymm\k, [rip + avx_pattern + YMM_BYTES * \k]
    .endr
    call take_exits
    .irp k, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    vmovdqu [rip + simd_found + YMM_BYTES * \k], ymm\k
    .endr

    lea rsi, [rip + avx_pattern]
    lea rdi, [rip + simd_found]
    mov ecx, YMM_BYTES
    mov edx, SIMD_REGS
    call fv_mismatch
    cmp rax, -1
    jne 2f
    PRINT "avx state kept across 3000 exits\n"
    jmp signature
2:  PRINT "avx state LOST in ymm"
    call fv_put_dec
    PUTC '\n'
    EXIT 1

no_avx:
    PRINT "no AVX: sse only\n"
    mov rax, cr4
    or rax, CR4_OSFXSR | CR4_OSXMMEXCPT
    mov cr4, rax

    .irp k, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    movdqu xmm\k, [rip + sse_pattern + XMM_BYTES * \k]
    .endr
    call take_exits
    .irp k, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    movdqu [rip + simd_found + XMM_BYTES * \k], xmm\k
    .endr

    lea rsi, [rip + sse_pattern]
    lea rdi, [rip + simd_found]
    mov ecx, XMM_BYTES
    mov edx, SIMD_REGS
    call fv_mismatch
    cmp rax, -1
    jne 3f
    PRINT "sse state kept across 3000 exits\n"
    jmp signature
3:  PRINT "sse state LOST in xmm"
    call fv_put_dec
    PUTC '\n'
    EXIT 1

signature:
    # The hypervisor's leaf: EBX, ECX, EDX spell "FerrovisorVM". The bytes
    # are printed as returned (unprintable ones as '?') so that a wrong
    # signature shows in the log.
    mov eax, HV_LEAF
    xor ecx, ecx
    cpuid
    mov [rip + hv_signature], ebx
    mov [rip + hv_signature + 4], ecx
    mov [rip + hv_signature + 8], edx
    PRINT "cpuid 0x40000000: "
    lea rsi, [rip + hv_signature]
    mov ecx, 12
    call fv_put_bytes
    PUTC '\n'
    EXIT 0

# take_exits: STATE_EXITS CPUID exits. CPUID always exits (SDM Vol. 3C,
# 26.1.2 "Instructions That Cause VM Exits Unconditionally") and writes only
# RAX, RBX, RCX and RDX; every SIMD register stays the guest's.
take_exits:
    push rbp
    mov ebp, STATE_EXITS
1:  xor eax, eax
    xor ecx, ecx
    cpuid
    dec ebp
    jnz 1b
    pop rbp
    ret

    .pushsection .text, 3
    .balign 32
avx_pattern:
    PATTERNS 0xA7A70000, SIMD_REGS, YMM_BYTES
sse_pattern:
    PATTERNS 0x10A60000, SIMD_REGS, XMM_BYTES
simd_found:
    .space SIMD_REGS * YMM_BYTES
hv_signature:
    .space 12
    .popsection
