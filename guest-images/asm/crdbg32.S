# crdbg32: a 32-bit protected-mode guest that makes the control-register
# and IA32_EFER writes the SDM says must fault, and the paging-mode
# transitions it says must work, and prints what it saw, one line each:
# "<write>: #GP", "<write>: ok" (see TRY). Its CR0 writes flip CR0.NE, the
# one bit the hypervisor owns, so each of them exits and meets the
# hypervisor's checks rather than the processor's (the outcome must be the
# same). Then its debug registers: DR7 must survive exits and vCPU
# switches, and a hardware breakpoint set before them must fire.
#
# ferrovisor: load_address=0x100000 mode=protected
.include "fv.inc"
.include "lib32.inc"
.include "try32.inc"

.equ CR0_PE, 1 << 0
.equ CR0_NE, 1 << 5
.equ CR0_NW, 1 << 29
.equ CR0_CD, 1 << 30
.equ CR0_PG, 1 << 31
.equ CR4_PAE, 1 << 5
.equ MSR_EFER, 0xC0000080
.equ EFER_LME, 1 << 8
.equ EFER_LMA, 1 << 10
# Page tables, 4 KiB aligned, in this guest's 2 MiB of RAM.
.equ PML4, 0x180000
.equ PDPT, 0x181000
.equ PD, 0x182000
# PAE paging's four PDPTEs (32-byte aligned), and a set with a reserved bit.
.equ PAE_PDPT, 0x183000
.equ BAD_PDPT, 0x183040
# CPUID exits between the DR7 write and the breakpoint: about 5.7 M
# Bochs ticks (57 a round trip with the exit trampoline's CPUID answers),
# some 57 slices of 10 ms, so the other guest runs between them.
.equ SPIN_EXITS, 100000

# TRY "name", resume: an exception inside the attempt prints
# "name: #GP" (#DB; any other "name: another exception") and continues at
# `resume`; END_TRY prints "name: ok" when none came.
TRY_FRAME ok="ok", names="GP DB", other="another exception", end_ok=1

# CR0_WRITE: MOV to CR0 of EAX with NE flipped from the current CR0, so
# the write exits. Clobbers ECX.
.macro CR0_WRITE
    mov ecx, cr0
    not ecx
    and ecx, CR0_NE
    and eax, ~CR0_NE
    or eax, ecx
    mov cr0, eax
.endm

# EFER_WRITE: WRMSR of EAX (EDX = 0) to IA32_EFER.
.macro EFER_WRITE
    mov ecx, MSR_EFER
    xor edx, edx
    wrmsr
.endm

    .text
    .globl _start
_start:
    cld
    mov esp, STACK_TOP
    call install_idt
    call build_tables

    TRY "cr0 pg without pe", 1f
    mov eax, cr0
    and eax, ~CR0_PE
    or eax, CR0_PG
    CR0_WRITE
    END_TRY 1

    TRY "cr0 nw without cd", 1f
    mov eax, cr0
    and eax, ~CR0_CD
    or eax, CR0_NW
    CR0_WRITE
    END_TRY 1

    TRY "cr4 vmxe", 1f
    mov eax, cr4
    or eax, CR4_VMXE
    mov cr4, eax
    END_TRY 1

    TRY "cr4 reserved bit 15", 1f
    mov eax, cr4
    or eax, 1 << 15
    mov cr4, eax
    END_TRY 1

    TRY "efer reserved bit 2", 1f
    mov eax, 1 << 2
    EFER_WRITE
    END_TRY 1

    TRY "efer lme with paging off", 1f
    mov eax, EFER_LME
    EFER_WRITE
    END_TRY 1

    # The case that used to end in a failed VM entry.
    TRY "cr0 pg with lme and no pae", 1f
    mov eax, PML4
    mov cr3, eax
    mov eax, cr0
    or eax, CR0_PG
    CR0_WRITE
    END_TRY 1
    call print_efer

    # Into IA-32e mode (compatibility mode: CS stays 32-bit) and out again.
    # No exception may come in between: this IDT has 32-bit gates.
    TRY "cr0 pg with lme and pae", 1f
    mov eax, cr4
    or eax, CR4_PAE
    mov cr4, eax
    mov eax, cr0
    or eax, CR0_PG
    CR0_WRITE
    call print_efer
    mov eax, cr0
    and eax, ~CR0_PG
    CR0_WRITE
    END_TRY 1
    PRINT "cr0 pg off in compatibility mode left ia-32e mode\n"
    call print_efer

    TRY "efer lme off", 1f
    xor eax, eax
    EFER_WRITE
    END_TRY 1

    # PAE paging: the PDPTEs come from CR3 when paging turns on.
    TRY "cr0 pae paging", 1f
    mov eax, PAE_PDPT
    mov cr3, eax
    mov eax, cr0
    or eax, CR0_PG
    CR0_WRITE
    END_TRY 1

    TRY "efer lme with paging on", 1f
    mov eax, EFER_LME
    EFER_WRITE
    END_TRY 1

    TRY "cr0 paging off", 1f
    mov eax, cr0
    and eax, ~CR0_PG
    CR0_WRITE
    END_TRY 1

    TRY "cr0 pae paging with a reserved pdpte bit", 1f
    mov eax, BAD_PDPT
    mov cr3, eax
    mov eax, cr0
    or eax, CR0_PG
    CR0_WRITE
    END_TRY 1

    call debug_state
    EXIT 0

# debug_state: DR7 across an exit, then a breakpoint across many exits and
# the other guest's turns on this CPU.
debug_state:
    mov eax, offset bp_target
    mov dr0, eax
    mov eax, 0x401                      # L0, execute, 1 byte
    mov dr7, eax
    xor eax, eax
    cpuid
    mov eax, dr7
    cmp eax, 0x401
    jne 1f
    PRINT "dr7 0x401 kept across an exit\n"
    jmp 2f
1:  PRINT "dr7 LOST across an exit\n"
2:  mov eax, dr0
    cmp eax, offset bp_target
    je 1f
    PRINT "dr0 LOST across an exit\n"
1:  mov ebp, SPIN_EXITS
1:  xor eax, eax
    cpuid
    dec ebp
    jnz 1b
    # The #DB comes inside bp_target: its return address is left on the
    # stack, so the stack pointer is put back after the attempt.
    mov ebx, esp
    TRY "breakpoint after exits and switches", 1f
    call bp_target
    END_TRY 1
    mov esp, ebx
    xor eax, eax
    mov dr7, eax
    ret

bp_target:
    nop
    ret

# print_efer: "efer.lma 0" or "efer.lma 1".
print_efer:
    push eax
    push ecx
    push edx
    mov ecx, MSR_EFER
    rdmsr
    test eax, EFER_LMA
    jz 1f
    PRINT "efer.lma 1\n"
    jmp 2f
1:  PRINT "efer.lma 0\n"
2:  pop edx
    pop ecx
    pop eax
    ret

# build_tables: a 4-level identity map of the first GiB (2 MiB pages) for
# IA-32e mode, PAE PDPTEs pointing at the same directory, and a copy of
# them with reserved bit 1 set in the first.
build_tables:
    mov edi, PML4
    xor eax, eax
    mov ecx, 4 * 4096 / 4
    rep stosd
    mov dword ptr [PML4], PDPT | 3
    mov dword ptr [PDPT], PD | 3
    mov dword ptr [PAE_PDPT], PD | 1
    mov dword ptr [BAD_PDPT], PD | 3
    mov edi, PD
    mov eax, 0x83                       # present, writable, 2 MiB
    mov ecx, 512
1:  mov [edi], eax
    add edi, 8
    add eax, 0x200000
    dec ecx
    jnz 1b
    ret
