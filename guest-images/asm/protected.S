# protected: a 32-bit protected-mode guest whose SSE registers must survive
# thousands of VM exits. It loads a pattern of its own into xmm0..xmm7,
# takes STATE_EXITS CPUID exits (each a round trip through the hypervisor,
# and a chance for another guest to run on this CPU), then checks every
# register. A hypervisor that forgets to keep the guest's SSE state apart
# from its own or another guest's is caught here.
#
# ferrovisor: load_address=0x100000 mode=protected
.include "fv.inc"
.include "lib32.inc"

.equ SSE_REGS, 8
.equ XMM_BYTES, 16

    .text
    .globl _start
_start:
    cld
    mov esp, STACK_TOP
    PRINT "hello from protected mode\n"

    # Enable SSE (Intel SDM Vol. 3A, 14.1.3 "Initialization of the SSE
    # Extensions"): no x87 emulation, MP set, TS clear so SSE instructions
    # do not raise #NM, and CR4.OSFXSR/OSXMMEXCPT.
    mov eax, cr0
    and eax, ~(CR0_EM | CR0_TS)
    or eax, CR0_MP
    mov cr0, eax
    mov eax, cr4
    or eax, CR4_OSFXSR | CR4_OSXMMEXCPT
    mov cr4, eax

    .irp k, 0,1,2,3,4,5,6,7
    movdqu xmm\k, [sse_pattern + XMM_BYTES * \k]
    .endr

    # CPUID always exits (SDM Vol. 3C, 26.1.2 "Instructions That Cause VM
    # Exits Unconditionally"). It writes only EAX, EBX, ECX and EDX.
    mov ebp, STATE_EXITS
1:  xor eax, eax
    xor ecx, ecx
    cpuid
    dec ebp
    jnz 1b

    .irp k, 0,1,2,3,4,5,6,7
    movdqu [sse_found + XMM_BYTES * \k], xmm\k
    .endr

    mov esi, offset sse_pattern
    mov edi, offset sse_found
    mov ecx, XMM_BYTES
    mov edx, SSE_REGS
    call fv_mismatch
    cmp eax, -1
    jne 2f
    PRINT "sse state kept across 3000 exits\n"
    EXIT 0

2:  # EAX = the first register that changed, 0..7: one digit.
    PRINT "sse state LOST in xmm"
    add al, '0'
    call fv_putc
    mov al, '\n'
    call fv_putc
    EXIT 1

    .pushsection .text, 3
    .balign 16
sse_pattern:
    PATTERNS 0x5EE00000, SSE_REGS, XMM_BYTES
sse_found:
    .space SSE_REGS * XMM_BYTES
    .popsection
