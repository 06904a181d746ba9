# flood: a guest that prints without pause on its COM1, forever, for the
# serial console's fairness test. Each REP OUTSB sends four 64-byte lines
# (256 bytes, the most the hypervisor moves in one string I/O exit) and
# never waits for THRE: far more than the physical port can carry, so its
# ring fills and the rest is dropped. It never stops by itself.
#
# ferrovisor: load_address=0x100000 mode=long
.include "fv.inc"
.include "lib64.inc"

.equ LINES_PER_EXIT, 4

    .pushsection .text, 2
flood_block:
    .rept LINES_PER_EXIT
    .ascii "flood flood flood flood flood flood flood flood flood flood ..\r\n"
    .endr
.equ FLOOD_BLOCK_LEN, . - flood_block
    .popsection

    .text
    .globl _start
_start:
    cld
    # Interrupts on, as an operating system runs (see spin.S: under Bochs
    # a guest with IF=0 takes no external-interrupt exits, so a kick would
    # wait for the slice to end). Nothing is ever delivered to it.
    sti
    mov rsp, STACK_TOP
    mov dx, COM1_THR
1:  lea rsi, [rip + flood_block]
    mov ecx, FLOOD_BLOCK_LEN
    rep outsb
    jmp 1b
