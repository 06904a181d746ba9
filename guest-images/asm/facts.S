# facts: a fidelity guest that checks small CPU facts an OS reads at boot,
# entered in 32-bit protected mode as a Multiboot kernel is. Each check
# prints one line; a line in capitals is a wrong answer, and the guest
# exits 1 after it. What it checks:
# - the x87 control word and MXCSR it starts with (0x37F and 0x1F80, Intel
#   SDM Vol. 3A, 9.1.1, Table 9-1; 0x37F is FNINIT's, as firmware leaves it);
# - CR0 once it ORs PG and WP into what it reads: CD and NW clear, caching
#   on, as on a booted PC (0x80010031 here: PE, ET, NE, WP, PG);
# - CPUID.1:ECX.OSXSAVE following the CR4.OSXSAVE it sets and clears;
# - the #GP the hypervisor injects for a refused RDMSR pushes RFLAGS with
#   RF set, as a fault the CPU raises does (SDM Vol. 3A, 17.3.1.1);
# - IA32_MISC_ENABLE takes a write of its fast-strings bit;
# - VMCALL with RAX = 0, another hypervisor's habit, returns the unknown-
#   call code (-1) and the guest goes on.
#
# ferrovisor: load_address=0x100000 mode=protected
.include "fv.inc"
.include "lib32.inc"

# The loader's 32-bit code segment selector (GDT entry 2).
.equ CODE_SELECTOR, 0x10
# Gate type byte: present, DPL 0, 32-bit interrupt gate (SDM Vol. 3A,
# 6.11, Figure 6-2).
.equ GATE_INTERRUPT, 0x8E
.equ VECTOR_GP, 13
.equ IDT_ENTRIES, 32
# MSRs (SDM Vol. 4, Table 2-2).
.equ MSR_FEATURE_CONTROL, 0x3A
.equ MSR_MISC_ENABLE, 0x1A0
.equ MISC_FAST_STRINGS, 1 << 0
.equ RFLAGS_RF, 1 << 16
.equ CR0_WP, 1 << 16
.equ CR0_NW, 1 << 29
.equ CR0_CD, 1 << 30
.equ CR0_PG, 1 << 31
.equ CR4_PSE, 1 << 4
.equ CPUID1_ECX_OSXSAVE, 1 << 27
# A 4 MiB page-directory entry: present, writable, page size (PSE).
.equ PDE_4M, 0x83

    .text
    .globl _start
_start:
    cld
    mov esp, STACK_TOP

    # The control word needs nothing; STMXCSR needs CR4.OSFXSR, which
    # does not change MXCSR.
    fnstcw [fcw]
    mov eax, cr4
    or eax, CR4_OSFXSR
    mov cr4, eax
    stmxcsr [mxcsr]
    PRINT "fcw at start: "
    movzx eax, word ptr [fcw]
    call put_hex
    PRINT "\n"
    PRINT "mxcsr at start: "
    mov eax, [mxcsr]
    call put_hex
    PRINT "\n"
    cmp word ptr [fcw], 0x37F
    jne .Lwrong
    cmp dword ptr [mxcsr], 0x1F80
    jne .Lwrong

    # Paging on the way a Multiboot kernel turns it on: read CR0, OR in
    # PG and WP, write it back.
    mov eax, cr4
    or eax, CR4_PSE
    mov cr4, eax
    mov eax, offset page_directory
    mov cr3, eax
    mov eax, cr0
    or eax, CR0_PG | CR0_WP
    mov cr0, eax
    mov eax, cr0
    PRINT "cr0 with paging: "
    call put_hex
    PRINT "\n"
    test eax, CR0_CD | CR0_NW
    jnz .Lcaching_off
    PRINT "cr0 cd and nw clear: caching on\n"

    # CPUID.1:ECX.OSXSAVE is a copy of CR4.OSXSAVE (SDM Vol. 2A, CPUID).
    mov eax, 1
    xor ecx, ecx
    cpuid
    test ecx, CPUID1_ECX_XSAVE
    jz .Lno_xsave
    mov eax, cr4
    or eax, CR4_OSXSAVE
    mov cr4, eax
    mov eax, 1
    xor ecx, ecx
    cpuid
    test ecx, CPUID1_ECX_OSXSAVE
    jz .Losxsave_stale
    mov eax, cr4
    and eax, ~CR4_OSXSAVE
    mov cr4, eax
    mov eax, 1
    xor ecx, ecx
    cpuid
    test ecx, CPUID1_ECX_OSXSAVE
    jnz .Losxsave_stale
    PRINT "cpuid osxsave follows cr4: set, then clear\n"
    jmp .Lxsave_done
.Lno_xsave:
    PRINT "cpuid osxsave: no xsave on this cpu\n"
.Lxsave_done:

    # An IDT with a #GP handler for the checks that fault.
    mov eax, offset gp_handler
    mov edi, offset idt + VECTOR_GP * 8
    mov [edi], ax
    mov word ptr [edi + 2], CODE_SELECTOR
    mov byte ptr [edi + 5], GATE_INTERRUPT
    shr eax, 16
    mov [edi + 6], ax
    lidt [idt_register]

    # A refused RDMSR: #GP at the RDMSR, its frame's EFLAGS with RF set.
    mov dword ptr [gp_count], 0
    mov dword ptr [gp_resume], offset .Lafter_rdmsr
    mov ecx, MSR_FEATURE_CONTROL
    rdmsr
.Lafter_rdmsr:
    cmp dword ptr [gp_count], 1
    jne .Lno_gp
    PRINT "refused rdmsr: #GP, eflags in the frame: "
    mov eax, [gp_eflags]
    call put_hex
    PRINT "\n"
    test eax, RFLAGS_RF
    jz .Lwrong
    PRINT "gp frame rf: set\n"

    # IA32_MISC_ENABLE: flip fast strings, read it back, put it back.
    mov dword ptr [gp_count], 0
    mov dword ptr [gp_resume], offset .Lmisc_refused
    mov ecx, MSR_MISC_ENABLE
    rdmsr
    mov esi, eax
    mov ebp, edx
    xor eax, MISC_FAST_STRINGS
    wrmsr
    rdmsr
    xor eax, esi
    cmp eax, MISC_FAST_STRINGS
    jne .Lwrong
    mov eax, esi
    mov edx, ebp
    wrmsr
    PRINT "misc_enable fast-strings write: taken\n"
    jmp .Lmisc_done
.Lmisc_refused:
    PRINT "MISC_ENABLE FAST-STRINGS WRITE REFUSED\n"
    EXIT 1
.Lmisc_done:

    # VMCALL 0, what other hypervisors' test programs use by habit.
    xor eax, eax
    mov ebx, 0x5A
    vmcall
    PRINT "vmcall 0: returned "
    call put_hex
    PRINT "\n"
    cmp eax, FV_UNKNOWN_CALL
    jne .Lwrong
    PRINT "vmcall 0: unknown call, the guest goes on\n"

    PRINT "facts done\n"
    EXIT 0

.Lcaching_off:
    PRINT "CR0.CD OR NW SET: THE GUEST RUNS UNCACHED\n"
    EXIT 1
.Losxsave_stale:
    PRINT "CPUID OSXSAVE DOES NOT FOLLOW CR4\n"
    EXIT 1
.Lno_gp:
    PRINT "REFUSED RDMSR RAISED NO #GP\n"
    EXIT 1
.Lwrong:
    PRINT "WRONG VALUE\n"
    EXIT 1

    .pushsection .text, 1
# put_hex: writes EAX as "0x" and eight hex digits. Keeps every register.
put_hex:
    pushad
    mov edx, eax
    mov al, '0'
    call fv_putc
    mov al, 'x'
    call fv_putc
    mov ecx, 8
1:  rol edx, 4
    mov al, dl
    and al, 0xF
    add al, '0'
    cmp al, '9'
    jbe 2f
    add al, 'a' - '9' - 1
2:  call fv_putc
    dec ecx
    jnz 1b
    popad
    ret

# gp_handler: counts the #GP, keeps the EFLAGS its frame holds and resumes
# at gp_resume. Frame (no privilege change): error code, EIP, CS, EFLAGS.
gp_handler:
    push eax
    mov eax, [esp + 16]
    mov [gp_eflags], eax
    inc dword ptr [gp_count]
    mov eax, [gp_resume]
    mov [esp + 8], eax
    pop eax
    add esp, 4
    iretd
    .popsection

    .pushsection .text, 3
    .balign 4096
# One 4 MiB page identity-mapping the guest's RAM.
page_directory:
    .long PDE_4M
    .space 4096 - 4
    .balign 8
idt:
    .space IDT_ENTRIES * 8
idt_register:
    .word IDT_ENTRIES * 8 - 1
    .long idt
    .balign 4
fcw:
    .word 0
    .balign 4
mxcsr:
    .long 0
gp_count:
    .long 0
gp_resume:
    .long 0
gp_eflags:
    .long 0
    .popsection
