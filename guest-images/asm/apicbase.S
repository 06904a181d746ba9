# apicbase: the local APIC as software finds it after reset, and
# IA32_APIC_BASE as the SDM says it behaves (Intel SDM Vol. 3A, 11.4.3
# "Enabling or Disabling the Local APIC" and 11.4.4 "Local APIC Status and
# Location"). It reads its APIC ID and version at the default base
# 0xFEE00000, tries two writes the processor refuses with #GP (a reserved
# bit, and x2APIC mode, which CPUID does not offer), disables the APIC
# (the MSR reads back without the enable bit), enables it again at
# another base, where it answers in its reset state, and moves it back.
# It never touches a page no APIC decodes: apicgone does that.
#
# ferrovisor: load_address=0x100000 mode=long
.include "fv.inc"
.include "lib64.inc"
.include "try64.inc"

# IA32_APIC_BASE (SDM Vol. 4, Table 2-2) and its bits: BSP 8, x2APIC
# enable 10, global enable 11, the base from bit 12.
.equ MSR_APIC_BASE, 0x1B
.equ APIC_BSP, 1 << 8
.equ APIC_EXTD, 1 << 10
.equ APIC_EN, 1 << 11
.equ APIC_DEFAULT, 0xFEE00000
# Where it moves the APIC: no RAM, no device of this platform.
.equ APIC_MOVED, 0xFEA00000
# Register offsets (SDM Vol. 3A, Table 11-1).
.equ APIC_ID, 0x20
.equ APIC_VERSION, 0x30
.equ APIC_TPR, 0x80
.equ APIC_SVR, 0xF0

# A #GP inside an attempt prints "<name>: #GP" (any other exception
# "<name>: exception <n>"); attempts that raise nothing call no_fault.
TRY_FRAME ok="no fault", names=GP

# WRITE_BASE value: WRMSR IA32_APIC_BASE.
.macro WRITE_BASE value
    mov ecx, MSR_APIC_BASE
    mov eax, \value
    xor edx, edx
    wrmsr
.endm

    .text
    .globl _start
_start:
    cld
    mov rsp, STACK_TOP
    call install_idt

    # After reset: the ID and the version at the default base.
    mov ebx, APIC_DEFAULT
    call print_id_version
    PRINT "apic base msr "
    call print_base

    PRINT "trying a reserved bit in apic base\n"
    TRY "reserved bit 9", .Lreserved_done
    WRITE_BASE APIC_DEFAULT | APIC_EN | APIC_BSP | (1 << 9)
    call no_fault
    END_TRY .Lreserved_done

    PRINT "trying x2apic mode\n"
    TRY "x2apic enable", .Lx2apic_done
    WRITE_BASE APIC_DEFAULT | APIC_EN | APIC_EXTD | APIC_BSP
    call no_fault
    END_TRY .Lx2apic_done

    # Software state to lose: a TPR of 0x40.
    mov ebx, APIC_DEFAULT
    mov dword ptr [rbx + APIC_TPR], 0x40

    # Disable: the enable bit clears (the BSP bit stays, read-only).
    WRITE_BASE APIC_DEFAULT
    PRINT "disabled: apic base msr "
    call print_base

    # Enable again somewhere else: the reset state answers there.
    WRITE_BASE APIC_MOVED | APIC_EN
    PRINT "moved: apic base msr "
    call print_base
    mov ebx, APIC_MOVED
    call print_id_version
    PRINT "at 0xfea00000: tpr "
    mov eax, [rbx + APIC_TPR]
    call put_hex32
    PRINT " svr "
    mov eax, [rbx + APIC_SVR]
    call put_hex32
    PUTC '\n'

    # And back where software expects it.
    WRITE_BASE APIC_DEFAULT | APIC_EN
    PRINT "back: apic base msr "
    call print_base
    mov ebx, APIC_DEFAULT
    call print_id_version
    EXIT 0

# print_id_version: "apic at <RBX>: id <n> version 0x<v>" from the APIC at
# RBX.
print_id_version:
    push rax
    PRINT "apic at "
    mov rax, rbx
    call put_hex32
    PRINT ": id "
    mov eax, [rbx + APIC_ID]
    shr eax, 24
    call fv_put_dec
    PRINT " version "
    mov eax, [rbx + APIC_VERSION]
    call put_hex32
    PUTC '\n'
    pop rax
    ret

# print_base: IA32_APIC_BASE as "0x<edx><eax>\n".
print_base:
    push rax
    push rcx
    push rdx
    mov ecx, MSR_APIC_BASE
    rdmsr
    push rax
    mov eax, edx
    call put_hex32
    pop rax
    mov byte ptr [rip + hex_prefix], 0
    call put_hex32
    mov byte ptr [rip + hex_prefix], 1
    PUTC '\n'
    pop rdx
    pop rcx
    pop rax
    ret

# put_hex32: EAX as 0x and eight hex digits (the prefix left out while
# hex_prefix is 0). Preserves every register.
put_hex32:
    push rax
    push rcx
    push rdx
    cmp byte ptr [rip + hex_prefix], 0
    je 1f
    PUTC '0'
    PUTC 'x'
1:  mov edx, eax
    mov ecx, 8
2:  rol edx, 4
    mov eax, edx
    and eax, 0xF
    cmp eax, 10
    jb 3f
    add eax, 'a' - 10 - '0'
3:  add eax, '0'
    call fv_putc
    dec ecx
    jnz 2b
    pop rdx
    pop rcx
    pop rax
    ret

    .pushsection .text, 3
hex_prefix:
    .byte 1
    .popsection
