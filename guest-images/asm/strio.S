# strio: string I/O (INS/OUTS) as hardware does it, from 64-bit mode:
# REP OUTSB of a line to COM1, through an FS override and with a 32-bit
# address size; REP INSB from a port nothing decodes (all ones, more
# elements than the hypervisor does in one exit); OUTSW with DF = 1
# (addresses count down); REP OUTSB that runs into a not-present page and
# REP INSB into a read-only one, each taking #PF in the guest's own
# handler with the architectural error code, CR2 and the count of what is
# left. Each check prints one line; a wrong result prints "BAD" and the
# values found.
#
# ferrovisor: load_address=0x100000 mode=long
.include "fv.inc"
.include "lib64.inc"

.equ UNCLAIMED_PORT, 0x2E8   # COM4's place: no device here
.equ IA32_FS_BASE, 0xC0000100
.equ CR0_WP, 1 << 16
.equ PTE_P, 1
.equ PTE_RW, 1 << 1
.equ PTE_ADDR, 0x000FFFFFFFFFF000
# The linear window the guest maps itself with 4 KiB pages: page 0 RAM,
# page 1 not present, page 2 read-only RAM. Page-directory entry 8 of the
# first GiB (16 MiB, past this guest's RAM).
.equ WINDOW, 0x1000000
.equ WINDOW_PDE, 8
.equ INSB_COUNT, 300

    # The lines, defined before their use so that their lengths are
    # constants (immediates) where they are used.
    .pushsection .text, 2
outsb_line:
    .ascii "rep outsb: a line through string i/o\n"
.equ OUTSB_LINE_LEN, . - outsb_line
fs_line:
    .ascii "rep outsb through an fs override\n"
.equ FS_LINE_LEN, . - fs_line
a32_line:
    .ascii "rep outsb with a 32-bit address size\n"
.equ A32_LINE_LEN, . - a32_line
# "outsw with df=1\n" backwards (so that OUTSW with DF = 1 prints it),
# one ASCII code a word.
outsw_words:
    .byte 10,0, 49,0, 61,0, 102,0, 100,0, 32,0, 104,0, 116,0
    .byte 105,0, 119,0, 32,0, 119,0, 115,0, 116,0, 117,0, 111,0
.equ OUTSW_WORDS_LEN, . - outsw_words
    .popsection

    .text
    .globl _start
_start:
    cld
    mov rsp, STACK_TOP
    call setup_idt

    # 1. REP OUTSB of a whole line to COM1.
    lea rsi, [rip + outsb_line]
    mov ecx, OUTSB_LINE_LEN
    mov dx, COM1_THR
    rep outsb
    lea rax, [rip + outsb_line + OUTSB_LINE_LEN]
    call check_done_rsi

    # 2. The same through an FS override: FS's base is honoured in 64-bit
    # mode.
    lea rax, [rip + fs_line - 0x100]
    mov rdx, rax
    shr rdx, 32
    mov ecx, IA32_FS_BASE
    wrmsr
    mov esi, 0x100
    mov ecx, FS_LINE_LEN
    mov dx, COM1_THR
    rep outsb dx, byte ptr fs:[rsi]
    mov eax, 0x100 + FS_LINE_LEN
    call check_done_rsi

    # 3. A 32-bit address size (0x67): ECX counts and ESI indexes, the
    # upper halves ignored and cleared.
    lea rsi, [rip + a32_line]
    mov rax, 0xABCD000000000000
    or rsi, rax
    mov rcx, 0xFFFFFFFF00000000 + A32_LINE_LEN
    mov dx, COM1_THR
    rep outsb dx, byte ptr [esi]
    lea rax, [rip + a32_line + A32_LINE_LEN]
    call check_done_rsi

    # 4. REP INSB from a port nothing decodes: all ones, exactly
    # INSB_COUNT bytes, more than one exit's worth.
    lea rdi, [rip + insb_buffer]
    mov ecx, INSB_COUNT
    mov dx, UNCLAIMED_PORT
    rep insb
    test rcx, rcx
    jnz bad_insb
    lea rax, [rip + insb_buffer + INSB_COUNT]
    cmp rdi, rax
    jne bad_insb
    lea rdi, [rip + insb_buffer]
    mov ecx, INSB_COUNT
    mov al, 0xFF
    repe scasb
    jne bad_insb
    cmp byte ptr [rdi], 0
    jne bad_insb
    PRINT "rep insb from an unclaimed port: 300 bytes of 0xff\n"

    # 5. OUTSW with DF = 1: the words at decreasing addresses, the low
    # byte of each to COM1's data register (the high one, 0, to IER).
    lea rsi, [rip + outsw_words + OUTSW_WORDS_LEN - 2]
    mov ecx, OUTSW_WORDS_LEN / 2
    mov dx, COM1_THR
    std
    rep outsw
    cld
    lea rax, [rip + outsw_words - 2]
    call check_done_rsi

    # 6. REP OUTSB running into a page that is not present.
    call map_window
    lea rax, [rip + after_outsb_fault]
    mov [rip + pf_resume], rax
    mov rsi, WINDOW + 4096 - 3
    mov ecx, 10
    mov dx, COM1_THR
    rep outsb
    PRINT "BAD: rep outsb into a not-present page did not fault\n"
    EXIT 1
after_outsb_fault:
    call report_fault
    mov rax, [rip + pf_rsi]
    call print_window_offset
    PUTC '\n'

    # 7. REP INSB into a read-only page with CR0.WP set.
    mov rax, cr0
    or rax, CR0_WP
    mov cr0, rax
    lea rax, [rip + after_insb_fault]
    mov [rip + pf_resume], rax
    mov rdi, WINDOW + 2 * 4096
    mov ecx, 4
    mov dx, UNCLAIMED_PORT
    PRINT "rep insb into a read-only page:"
    rep insb
    PRINT "BAD: no fault\n"
    EXIT 1
after_insb_fault:
    call report_fault
    mov rax, [rip + pf_rdi]
    call print_window_offset
    PUTC '\n'
    EXIT 0

bad_insb:
    PRINT "BAD: rep insb from an unclaimed port: rcx "
    mov rax, rcx
    call fv_put_dec
    PUTC '\n'
    EXIT 1

# check_done_rsi: after a REP OUTS, RCX must be 0 and RSI equal RAX.
check_done_rsi:
    test rcx, rcx
    jnz 1f
    cmp rsi, rax
    jne 1f
    ret
1:  PRINT "BAD: after rep outs rcx "
    mov rax, rcx
    call fv_put_dec
    PRINT " rsi "
    mov rax, rsi
    call fv_put_dec
    PUTC '\n'
    EXIT 1

# report_fault: prints " #PF error <e>, cr2 +<offset in the window>, rcx
# <left>, index +" from what the handler saved.
report_fault:
    PRINT " #PF error "
    mov rax, [rip + pf_error]
    call fv_put_dec
    PRINT ", cr2 +"
    mov rax, [rip + pf_cr2]
    call print_window_offset
    PRINT ", rcx "
    mov rax, [rip + pf_rcx]
    call fv_put_dec
    PRINT ", index +"
    ret

# print_window_offset: RAX - WINDOW in decimal.
print_window_offset:
    push rcx
    mov rcx, WINDOW
    sub rax, rcx
    call fv_put_dec
    pop rcx
    ret

# map_window: points page-directory entry WINDOW_PDE of the loader's
# identity map (found through CR3) at `window_pt` and flushes the TLB.
map_window:
    mov rax, cr3
    and rax, -4096
    mov rax, [rax]
    mov rcx, PTE_ADDR
    and rax, rcx
    mov rax, [rax]
    and rax, rcx
    lea rdx, [rip + window_pt]
    or rdx, PTE_P | PTE_RW
    mov [rax + 8 * WINDOW_PDE], rdx
    # Page 0: RAM; page 1: not present; page 2: read-only RAM.
    lea rdx, [rip + window_page0]
    or rdx, PTE_P | PTE_RW
    mov [rip + window_pt], rdx
    mov qword ptr [rip + window_pt + 8], 0
    lea rdx, [rip + window_page2]
    or rdx, PTE_P
    mov [rip + window_pt + 16], rdx
    mov rax, cr3
    mov cr3, rax
    ret

# setup_idt: #GP and #PF handlers in a 15-entry IDT.
setup_idt:
    lea rdi, [rip + idt]
    lea rax, [rip + gp_handler]
    mov ecx, 13
    call set_gate
    lea rax, [rip + pf_handler]
    mov ecx, 14
    call set_gate
    lea rax, [rip + idt]
    mov [rip + idtr + 2], rax
    lidt [rip + idtr]
    ret

# set_gate: interrupt gate ECX -> RAX in the IDT at RDI (SDM Vol. 3A,
# 6.14.1, Figure 6-8).
set_gate:
    push rdx
    shl ecx, 4
    add rcx, rdi
    mov [rcx], ax
    mov dx, cs
    mov [rcx + 2], dx
    mov word ptr [rcx + 4], 0x8E00
    shr rax, 16
    mov [rcx + 6], ax
    shr rax, 16
    mov [rcx + 8], eax
    mov dword ptr [rcx + 12], 0
    pop rdx
    ret

# pf_handler: saves the error code, CR2 and the string registers, then
# goes on at pf_resume on a fresh stack (the faulting instruction is not
# restarted).
pf_handler:
    mov [rip + pf_rcx], rcx
    mov [rip + pf_rsi], rsi
    mov [rip + pf_rdi], rdi
    pop rax
    mov [rip + pf_error], rax
    mov rax, cr2
    mov [rip + pf_cr2], rax
    mov rsp, STACK_TOP
    cld
    jmp [rip + pf_resume]

gp_handler:
    mov rsp, STACK_TOP
    PRINT "BAD: unexpected #GP\n"
    EXIT 1


    .pushsection .text, 3
    .balign 16
idt:
    .space 15 * 16
idtr:
    .word 15 * 16 - 1
    .quad 0
pf_resume:
    .quad 0
pf_error:
    .quad 0
pf_cr2:
    .quad 0
pf_rcx:
    .quad 0
pf_rsi:
    .quad 0
pf_rdi:
    .quad 0
insb_buffer:
    .space INSB_COUNT + 16
    .balign 4096
window_pt:
    .space 4096
window_page0:
    .space 4096 - 3
    .ascii "pf:"
window_page2:
    .space 4096
    .popsection
