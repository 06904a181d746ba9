/*
 * kvm-bench: runs one of Ferrovisor's flat test guests under Linux KVM,
 * for the KVM column of `cargo xtask bench --peer kvm`
 * (xtask/src/bench/kvm_peer.rs builds it with `gcc -static -O2` and boots
 * it natively under Bochs with Debian's stock kernel and its own kvm and
 * kvm-intel modules).
 *
 *   kvm-bench [--name NAME] [--memory BYTES] [--load ADDR] [--entry ADDR]
 *             [--limit TICKS] IMAGE
 *
 * The VM is what Ferrovisor gives a `format = "flat"`, `mode = "long"`
 * guest (kernel/loader/src/flat.rs and entry.rs): one memory slot of
 * --memory bytes (default 2 MiB) at guest-physical 0, the image at --load
 * (default 0x100000), a GDT at 0x1000 (null, unused, 64-bit code as
 * selector 0x10, flat data as 0x18), page tables identity-mapping the first
 * 4 GiB with 2 MiB pages (PML4 at 0x2000, PDPT at 0x3000, one page
 * directory per GiB from 0x4000), CR0 = PE|ET|NE|PG, CR4 = PAE, EFER =
 * LME|LMA, CS = 0x10, the data segments 0x18, TR a busy TSS at 0, the LDT
 * unusable, an empty IDT, RFLAGS = 2 (interrupts off), RIP = --entry
 * (default the load address) and every other register 0 (RSP too: the
 * guest sets its own stack).
 *
 * What KVM can handle in its kernel it handles: the in-kernel irqchip
 * (KVM_CREATE_IRQCHIP: the local APIC at its reset base 0xFEE00000, the
 * IO-APIC and the 8259s) and PIT (KVM_CREATE_PIT2, with port 0x61), and the
 * vCPU's CPUID is KVM_GET_SUPPORTED_CPUID's. This program handles what
 * reaches user space:
 *
 *   - COM1 (0x3F8-0x3FF), a 16550 reduced to what the guests use: a byte
 *     written to THR (0x3F8) is output; LSR (0x3FD) reads 0x60 (transmitter
 *     empty), IIR (0x3FA) 0x01 (no interrupt), every other register 0, and
 *     other writes are ignored.
 *   - A write to port 0xF4 (QEMU's isa-debug-exit, where the guests may
 *     say they are done) ends the run: the guest "exited with code" the
 *     value written.
 *   - Any other port or MMIO address reads as all ones and ignores
 *     writes, as on a PC bus with nothing there; each is counted and the
 *     first few are named at the end.
 *
 * Output: the guest's COM1 output goes to standard output one line at a
 * time, each line prefixed with "[NAME] " (default "guest"), the way
 * Ferrovisor's console prefixes a guest's lines, so `cargo xtask bench`
 * reads KVM's figures with the code that reads Ferrovisor's. Bytes are
 * gathered until a newline (or 4 KiB), so a timed loop of COM1 writes
 * costs no system call per byte. The program's own lines start with
 * "kvm-bench: " and go to standard error; its last is
 *
 *   kvm-bench: guest NAME: stopped: exited with code N (HOW)
 *
 * when the guest ended as Ferrovisor's guests end, or `stopped: <why>`.
 *
 * How a guest ends: Ferrovisor's guests end with the FV_EXIT hypercall
 * (VMCALL with RAX = 0x46560001, the code in RBX). KVM answers a VMCALL
 * it does not know in its kernel with RAX = -KVM_ENOSYS (-1000), and the
 * guest's fv_exit then halts with interrupts off, which nothing but an NMI
 * or INIT can end; with the in-kernel local APIC that HLT never reaches
 * user space. So a periodic timer (SIGALRM) interrupts KVM_RUN about every
 * CHECK_TICKS ticks of the TSC, and when the guest wrote nothing to COM1
 * since the last tick the program asks KVM_GET_MP_STATE and
 * KVM_GET_REGS: a vCPU halted with
 * RFLAGS.IF = 0 has stopped for good, and the code is RBX where RAX is
 * -KVM_ENOSYS (the FV_EXIT that KVM did not answer). A vCPU found twice
 * in a row at a VMCALL with RAX = FV_EXIT has stopped too (some KVMs, a
 * nested one seen on a development host among them, never complete the
 * unknown hypercall), with the code in RBX. Each tick costs the guest one
 * exit to user space; the guests time loops of a few million ticks, so a
 * tick lands in a timed loop rarely (the host's own timer interrupts come
 * far more often). --limit
 * ends a run that goes on longer, counted in TSC ticks (default 10^10).
 *
 * Why the period is set in TSC ticks: under Bochs the TSC counts one per
 * instruction, while Linux's clock may follow the TSC at the 3.5 GHz the
 * CPU model claims or Bochs's HPET at its `ips` rate, about 350 times
 * faster: a fixed period of one second would be 10 million instructions
 * in one case and 3.5 billion (minutes of wall-clock time) in the other.
 * So the program first measures how far the clock moves while the TSC
 * advances CALIBRATION_TICKS, and sets the timer's period to match
 * (under Bochs with Debian's 6.1 kernel: 5.7 ms for CHECK_TICKS, the
 * clock following the TSC).
 *
 * Exit status: the guest's exit code (0 for a guest that passed) when it
 * ended as above; 1 when the VM could not be made or run, or the guest
 * stopped any other way (a triple fault, a failed entry, a KVM internal
 * error); 2 for a bad command line; 3 at the time limit.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* The layout of Ferrovisor's loader (kernel/loader/src/layout.rs). */
#define GDT_ADDR 0x1000u
#define PML4_ADDR 0x2000u
#define PDPT_ADDR 0x3000u
#define PD_ADDR 0x4000u
#define IDENTITY_MAP_GIB 4u
/* The end of the loader's structures: the image must not overlap them. */
#define LOADER_END (PD_ADDR + IDENTITY_MAP_GIB * 0x1000u)
#define BOOT_CS 0x10
#define BOOT_DS 0x18

/* Control register and EFER bits (Intel SDM Vol. 3A, 2.5 and 2.2.1). */
#define CR0_PE (1ull << 0)
#define CR0_ET (1ull << 4)
#define CR0_NE (1ull << 5)
#define CR0_PG (1ull << 31)
#define CR4_PAE (1ull << 5)
#define EFER_LME (1ull << 8)
#define EFER_LMA (1ull << 10)
#define RFLAGS_FIXED (1ull << 1)
#define RFLAGS_IF (1ull << 9)

/* Page-table entry bits (SDM Vol. 3A, 4.5). */
#define PTE_PRESENT (1ull << 0)
#define PTE_WRITABLE (1ull << 1)
#define PTE_HUGE (1ull << 7)

/* Where KVM keeps the three pages of its real-mode TSS, and the identity
 * page table after them: just below the BIOS area at the top of 4 GiB,
 * away from guest RAM and the local APIC (KVM_SET_TSS_ADDR's usual
 * place). */
#define KVM_TSS_ADDR 0xfffbd000ull

/* COM1's registers (PC16550D datasheet, "Register Addresses"). */
#define COM1_BASE 0x3F8
#define COM1_IIR (COM1_BASE + 2)
#define COM1_LSR (COM1_BASE + 5)
#define LSR_THRE_TEMT 0x60
#define IIR_NONE 0x01
/* The port whose writes end the run (QEMU's isa-debug-exit). */
#define EXIT_PORT 0xF4

/* What KVM puts in RAX for a VMCALL it does not know (KVM_ENOSYS in
 * include/uapi/linux/kvm_para.h). */
#define KVM_ENOSYS_RESULT ((uint64_t)-1000)
/* Ferrovisor's FV_EXIT hypercall number (guest-images/asm/fv.inc). */
#define FV_EXIT 0x46560001ull

/* How often the timer interrupts the guest, in TSC ticks: about a second
 * of wall-clock time under Bochs, a few milliseconds on hardware. */
#define CHECK_TICKS 20000000ull
/* How far the TSC advances while the clock is calibrated against it. */
#define CALIBRATION_TICKS 2000000ull
/* The timer period's bounds, in nanoseconds of the host's clock. */
#define PERIOD_MIN_NS 1000000ull
#define PERIOD_MAX_NS 1000000000ull
#define LINE_MAX_BYTES 4096
#define NAMED_UNCLAIMED 8

enum {
	STATUS_FAILED = 1,
	STATUS_USAGE = 2,
	STATUS_TIME_LIMIT = 3,
};

static const char *guest_name = "guest";

/* One line on stderr, after the program's name. */
static void vsay(const char *fmt, va_list ap)
{
	fputs("kvm-bench: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
}

static void say(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsay(fmt, ap);
	va_end(ap);
}

static void __attribute__((noreturn)) fail(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsay(fmt, ap);
	va_end(ap);
	exit(STATUS_FAILED);
}

static void __attribute__((noreturn)) usage(const char *why)
{
	fprintf(stderr,
		"kvm-bench: %s\n"
		"usage: kvm-bench [--name NAME] [--memory BYTES] [--load ADDR] "
		"[--entry ADDR] [--limit TICKS] IMAGE\n",
		why);
	exit(STATUS_USAGE);
}

/* An ioctl that must succeed. */
static int must(int fd, unsigned long request, void *arg, const char *what)
{
	int r = ioctl(fd, request, arg);
	if (r < 0)
		fail("%s failed: %s", what, strerror(errno));
	return r;
}

/* A number in C notation (0x... hexadecimal), with an optional K, M or G
 * suffix (powers of two) when `sizes` is set. */
static uint64_t number(const char *option, const char *text, int sizes)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(text, &end, 0);
	if (errno || end == text || text[0] == '-') {
		fprintf(stderr, "kvm-bench: %s: `%s` is not a number\n", option,
			text);
		exit(STATUS_USAGE);
	}
	if (sizes && *end) {
		int shift = *end == 'K' ? 10 : *end == 'M' ? 20 : *end == 'G' ? 30 : -1;
		if (shift < 0 || end[1] || v > (UINT64_MAX >> shift)) {
			fprintf(stderr, "kvm-bench: %s: cannot read `%s`\n",
				option, text);
			exit(STATUS_USAGE);
		}
		v <<= shift;
	} else if (*end) {
		fprintf(stderr, "kvm-bench: %s: `%s` is not a number\n", option,
			text);
		exit(STATUS_USAGE);
	}
	return v;
}

/* ---------------------------------------------------------------- output */

static char line[LINE_MAX_BYTES];
static size_t line_len;
/* Bytes the guest wrote to COM1, for the quiet check. */
static uint64_t com1_bytes;

static void flush_line(void)
{
	if (!line_len)
		return;
	printf("[%s] %.*s\n", guest_name, (int)line_len, line);
	fflush(stdout);
	line_len = 0;
}

static void com1_out(uint8_t byte)
{
	com1_bytes++;
	if (byte == '\n') {
		flush_line();
		return;
	}
	if (byte == '\r')
		return;
	line[line_len++] = byte;
	if (line_len == sizeof line)
		flush_line();
}

/* ---------------------------------------------------------------- devices */

struct unclaimed {
	uint64_t count;
	uint64_t first[NAMED_UNCLAIMED];
	int first_len;
};

static struct unclaimed ports, mmio;

static void note(struct unclaimed *u, uint64_t where)
{
	u->count++;
	for (int i = 0; i < u->first_len; i++)
		if (u->first[i] == where)
			return;
	if (u->first_len < NAMED_UNCLAIMED)
		u->first[u->first_len++] = where;
}

static void report(const struct unclaimed *u, const char *what)
{
	if (!u->count)
		return;
	char names[NAMED_UNCLAIMED * 20] = "";
	size_t at = 0;
	for (int i = 0; i < u->first_len; i++)
		at += snprintf(names + at, sizeof names - at, "%s0x%llx",
			       i ? ", " : "", (unsigned long long)u->first[i]);
	say("%llu accesses to %s nothing here claims (reading all ones): %s",
	    (unsigned long long)u->count, what, names);
}

/* An I/O exit: returns -1 to go on, else the exit code the guest wrote to
 * EXIT_PORT. */
static int port_io(struct kvm_run *run)
{
	uint8_t *data = (uint8_t *)run + run->io.data_offset;
	uint16_t port = run->io.port;
	int out = run->io.direction == KVM_EXIT_IO_OUT;
	for (uint32_t i = 0; i < run->io.count; i++, data += run->io.size) {
		if (out && port == EXIT_PORT)
			return data[0];
		if (port >= COM1_BASE && port < COM1_BASE + 8) {
			if (out) {
				if (port == COM1_BASE)
					com1_out(data[0]);
			} else {
				memset(data, 0, run->io.size);
				if (port == COM1_LSR)
					data[0] = LSR_THRE_TEMT;
				else if (port == COM1_IIR)
					data[0] = IIR_NONE;
			}
			continue;
		}
		note(&ports, port);
		if (!out)
			memset(data, 0xff, run->io.size);
	}
	return -1;
}

/* ---------------------------------------------------------------- the VM */

static void put_u64(uint8_t *ram, uint64_t at, uint64_t v)
{
	memcpy(ram + at, &v, sizeof v);
}

/* The GDT and identity map of Ferrovisor's long-mode flat guests. */
static void write_loader_structures(uint8_t *ram)
{
	/* 64-bit code: base 0, limit 0xFFFFF pages, access 0x9B (present,
	 * code, execute/read, accessed), flags L and G. */
	put_u64(ram, GDT_ADDR + BOOT_CS, 0x00AF9B000000FFFFull);
	/* Data: read/write, accessed, present, B and G. */
	put_u64(ram, GDT_ADDR + BOOT_DS, 0x00CF93000000FFFFull);
	put_u64(ram, PML4_ADDR, PDPT_ADDR | PTE_PRESENT | PTE_WRITABLE);
	for (uint64_t gib = 0; gib < IDENTITY_MAP_GIB; gib++) {
		uint64_t pd = PD_ADDR + gib * 0x1000;
		put_u64(ram, PDPT_ADDR + gib * 8, pd | PTE_PRESENT | PTE_WRITABLE);
		for (uint64_t i = 0; i < 512; i++)
			put_u64(ram, pd + i * 8,
				((gib << 30) + (i << 21)) | PTE_PRESENT |
					PTE_WRITABLE | PTE_HUGE);
	}
}

static struct kvm_segment flat_segment(uint16_t selector, uint8_t type,
				       int code64)
{
	struct kvm_segment s = {
		.base = 0,
		.limit = 0xFFFFFFFF,
		.selector = selector,
		.type = type,
		.present = 1,
		.dpl = 0,
		.db = code64 ? 0 : 1,
		.s = 1,
		.l = code64 ? 1 : 0,
		.g = 1,
	};
	return s;
}

static void set_entry_state(int vcpu, uint64_t entry)
{
	struct kvm_sregs sregs;
	must(vcpu, KVM_GET_SREGS, &sregs, "KVM_GET_SREGS");
	sregs.cs = flat_segment(BOOT_CS, 0xB, 1);
	sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss =
		flat_segment(BOOT_DS, 0x3, 0);
	sregs.tr = (struct kvm_segment){
		.limit = 0xFFFF, .type = 0xB, .present = 1,
	};
	sregs.ldt = (struct kvm_segment){ .unusable = 1 };
	sregs.gdt.base = GDT_ADDR;
	sregs.gdt.limit = 4 * 8 - 1;
	sregs.idt.base = 0;
	sregs.idt.limit = 0;
	sregs.cr0 = CR0_PE | CR0_ET | CR0_NE | CR0_PG;
	sregs.cr3 = PML4_ADDR;
	sregs.cr4 = CR4_PAE;
	sregs.efer = EFER_LME | EFER_LMA;
	must(vcpu, KVM_SET_SREGS, &sregs, "KVM_SET_SREGS");

	struct kvm_regs regs;
	memset(&regs, 0, sizeof regs);
	regs.rip = entry;
	regs.rflags = RFLAGS_FIXED;
	must(vcpu, KVM_SET_REGS, &regs, "KVM_SET_REGS");
}

static void set_cpuid(int kvm, int vcpu)
{
	for (uint32_t n = 64;; n *= 2) {
		struct kvm_cpuid2 *c =
			calloc(1, sizeof *c + n * sizeof(struct kvm_cpuid_entry2));
		if (!c)
			fail("out of memory");
		c->nent = n;
		if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, c) == 0) {
			must(vcpu, KVM_SET_CPUID2, c, "KVM_SET_CPUID2");
			free(c);
			return;
		}
		free(c);
		if (errno != E2BIG || n > 4096)
			fail("KVM_GET_SUPPORTED_CPUID failed: %s",
			     strerror(errno));
	}
}

static uint8_t *load_image(const char *path, size_t *len)
{
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		fail("cannot open %s: %s", path, strerror(errno));
	struct stat st;
	if (fstat(fd, &st) < 0)
		fail("cannot read %s: %s", path, strerror(errno));
	uint8_t *bytes = malloc(st.st_size ? st.st_size : 1);
	if (!bytes)
		fail("out of memory");
	size_t got = 0;
	while (got < (size_t)st.st_size) {
		ssize_t r = read(fd, bytes + got, st.st_size - got);
		if (r <= 0)
			fail("cannot read %s: %s", path,
			     r ? strerror(errno) : "it shrank");
		got += r;
	}
	close(fd);
	*len = got;
	return bytes;
}

/* ---------------------------------------------------------------- the run */

static uint64_t rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("lfence; rdtsc" : "=a"(lo), "=d"(hi));
	return (uint64_t)hi << 32 | lo;
}

static uint64_t now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* The timer period, in nanoseconds of the host's clock, that comes
 * closest to CHECK_TICKS ticks of the TSC (see the header comment). */
static uint64_t check_period_ns(void)
{
	uint64_t tsc0 = rdtsc(), t0 = now_ns(), tsc1, t1;
	do {
		tsc1 = rdtsc();
		t1 = now_ns();
	} while (tsc1 - tsc0 < CALIBRATION_TICKS);
	/* A clock that did not move (a coarse one) gives the longest
	 * period. */
	if (t1 == t0)
		return PERIOD_MAX_NS;
	double period = (double)(t1 - t0) / (double)(tsc1 - tsc0) * CHECK_TICKS;
	if (period < PERIOD_MIN_NS)
		return PERIOD_MIN_NS;
	if (period > PERIOD_MAX_NS)
		return PERIOD_MAX_NS;
	return (uint64_t)period;
}

/* Whether the guest's instruction at `rip` (identity-mapped) is VMCALL
 * (0F 01 C1). */
static int at_vmcall(const uint8_t *ram, uint64_t memory, uint64_t rip)
{
	static const uint8_t vmcall[3] = { 0x0F, 0x01, 0xC1 };
	return rip < memory && memory - rip >= sizeof vmcall &&
	       !memcmp(ram + rip, vmcall, sizeof vmcall);
}

static struct kvm_run *run;
static volatile sig_atomic_t ticks;
/* The TSC when the guest started. */
static uint64_t started;

static void on_tick(int sig)
{
	(void)sig;
	ticks++;
	/* A tick while this thread is outside KVM_RUN makes the next
	 * KVM_RUN return at once with EINTR (Documentation/virt/kvm/api.rst,
	 * immediate_exit). */
	run->immediate_exit = 1;
}

static void __attribute__((noreturn)) stopped(int status, const char *fmt, ...)
{
	flush_line();
	report(&ports, "ports");
	report(&mmio, "MMIO addresses");
	char why[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, sizeof why, fmt, ap);
	va_end(ap);
	say("guest %s: ran for %llu TSC ticks", guest_name,
	    (unsigned long long)(rdtsc() - started));
	say("guest %s: stopped: %s", guest_name, why);
	exit(status);
}

int main(int argc, char **argv)
{
	uint64_t memory = 2 << 20, load = 0x100000, entry = 0;
	uint64_t limit = 10000000000ull;
	int entry_given = 0;
	const char *image = NULL;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (a[0] != '-') {
			if (image)
				usage("more than one IMAGE");
			image = a;
			continue;
		}
		if (i + 1 >= argc)
			usage("an option without its value");
		const char *v = argv[++i];
		if (!strcmp(a, "--name"))
			guest_name = v;
		else if (!strcmp(a, "--memory"))
			memory = number(a, v, 1);
		else if (!strcmp(a, "--load"))
			load = number(a, v, 0);
		else if (!strcmp(a, "--entry"))
			entry = number(a, v, 0), entry_given = 1;
		else if (!strcmp(a, "--limit"))
			limit = number(a, v, 0);
		else
			usage("unknown option");
	}
	if (!image)
		usage("no IMAGE");
	if (!entry_given)
		entry = load;
	if (memory < (2 << 20) || memory % (2 << 20) || memory > (1ull << 30))
		usage("--memory must be a whole number of 2 MiB up to 1 GiB");
	size_t len;
	uint8_t *bytes = load_image(image, &len);
	if (!len || load < LOADER_END || load > memory || len > memory - load)
		fail("%s (%zu bytes) does not fit at 0x%llx in %llu bytes of RAM "
		     "above the loader's page tables (0x%x)",
		     image, len, (unsigned long long)load,
		     (unsigned long long)memory, LOADER_END);
	if (entry < load || entry >= load + len)
		fail("the entry 0x%llx is outside the image (0x%llx..0x%llx)",
		     (unsigned long long)entry, (unsigned long long)load,
		     (unsigned long long)(load + len));

	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		fail("cannot open /dev/kvm: %s (are kvm and kvm-intel loaded?)",
		     strerror(errno));
	if (ioctl(kvm, KVM_GET_API_VERSION, 0) != KVM_API_VERSION)
		fail("/dev/kvm speaks another API version than %d",
		     KVM_API_VERSION);
	int vm = must(kvm, KVM_CREATE_VM, 0, "KVM_CREATE_VM");
	must(vm, KVM_SET_TSS_ADDR, (void *)KVM_TSS_ADDR, "KVM_SET_TSS_ADDR");

	uint8_t *ram = mmap(NULL, memory, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (ram == MAP_FAILED)
		fail("cannot map %llu bytes of guest RAM: %s",
		     (unsigned long long)memory, strerror(errno));
	write_loader_structures(ram);
	memcpy(ram + load, bytes, len);
	free(bytes);
	struct kvm_userspace_memory_region region = {
		.slot = 0,
		.guest_phys_addr = 0,
		.memory_size = memory,
		.userspace_addr = (uintptr_t)ram,
	};
	must(vm, KVM_SET_USER_MEMORY_REGION, &region,
	     "KVM_SET_USER_MEMORY_REGION");
	must(vm, KVM_CREATE_IRQCHIP, 0, "KVM_CREATE_IRQCHIP");
	struct kvm_pit_config pit = { .flags = 0 };
	must(vm, KVM_CREATE_PIT2, &pit, "KVM_CREATE_PIT2");

	int vcpu = must(vm, KVM_CREATE_VCPU, 0, "KVM_CREATE_VCPU");
	int run_size = must(kvm, KVM_GET_VCPU_MMAP_SIZE, 0,
			    "KVM_GET_VCPU_MMAP_SIZE");
	run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED)
		fail("cannot map the vCPU's kvm_run: %s", strerror(errno));
	set_cpuid(kvm, vcpu);
	set_entry_state(vcpu, entry);

	/* SA_RESTART: a tick must not cut short a write of the guest's
	 * output to a slow console (KVM_RUN returns EINTR regardless). */
	struct sigaction sa = { .sa_handler = on_tick, .sa_flags = SA_RESTART };
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGALRM, &sa, NULL) < 0)
		fail("sigaction: %s", strerror(errno));
	uint64_t period = check_period_ns();
	struct itimerval every = {
		.it_interval = { .tv_sec = period / 1000000000,
				 .tv_usec = period % 1000000000 / 1000 },
	};
	every.it_value = every.it_interval;
	if (setitimer(ITIMER_REAL, &every, NULL) < 0)
		fail("setitimer: %s", strerror(errno));

	say("guest %s: %s, %zu bytes at 0x%llx, entry 0x%llx, %llu KiB of RAM, "
	    "long mode",
	    guest_name, image, len, (unsigned long long)load,
	    (unsigned long long)entry, (unsigned long long)(memory >> 10));
	say("checking whether the guest stopped every %llu us of the host's clock "
	    "(about %llu TSC ticks)",
	    (unsigned long long)(period / 1000), CHECK_TICKS);
	started = rdtsc();
	uint64_t seen_bytes = 0, seen_rip = UINT64_MAX;
	sig_atomic_t seen_ticks = 0;
	for (;;) {
		int r = ioctl(vcpu, KVM_RUN, 0);
		if (r < 0 && errno != EINTR)
			stopped(STATUS_FAILED, "KVM_RUN failed: %s",
				strerror(errno));
		if (ticks != seen_ticks) {
			seen_ticks = ticks;
			run->immediate_exit = 0;
			if (rdtsc() - started >= limit)
				stopped(STATUS_TIME_LIMIT,
					"still running after %llu TSC ticks "
					"(--limit)",
					(unsigned long long)limit);
			if (com1_bytes == seen_bytes) {
				struct kvm_mp_state mp;
				struct kvm_regs regs;
				must(vcpu, KVM_GET_MP_STATE, &mp,
				     "KVM_GET_MP_STATE");
				must(vcpu, KVM_GET_REGS, &regs, "KVM_GET_REGS");
				if (mp.mp_state == KVM_MP_STATE_HALTED &&
				    !(regs.rflags & RFLAGS_IF)) {
					if (regs.rax == KVM_ENOSYS_RESULT)
						stopped((int)(regs.rbx & 0xff),
							"exited with code %llu "
							"(FV_EXIT, which KVM "
							"answers -KVM_ENOSYS, "
							"then HLT with "
							"interrupts off)",
							(unsigned long long)regs.rbx);
					stopped(STATUS_FAILED,
						"halted with interrupts off at "
						"RIP 0x%llx",
						(unsigned long long)regs.rip);
				}
				if (regs.rip == seen_rip && regs.rax == FV_EXIT &&
				    at_vmcall(ram, memory, regs.rip))
					stopped((int)(regs.rbx & 0xff),
						"exited with code %llu (FV_EXIT, "
						"which this KVM never completes)",
						(unsigned long long)regs.rbx);
				seen_rip = regs.rip;
			} else {
				seen_rip = UINT64_MAX;
			}
			seen_bytes = com1_bytes;
		}
		if (r < 0)
			continue;
		switch (run->exit_reason) {
		case KVM_EXIT_IO: {
			int code = port_io(run);
			if (code >= 0)
				stopped(code,
					"exited with code %d (a write to port "
					"0x%x)",
					code, EXIT_PORT);
			break;
		}
		case KVM_EXIT_MMIO:
			note(&mmio, run->mmio.phys_addr);
			if (!run->mmio.is_write)
				memset(run->mmio.data, 0xff, sizeof run->mmio.data);
			break;
		case KVM_EXIT_INTR:
			break;
		case KVM_EXIT_HLT:
			stopped(STATUS_FAILED, "HLT reached user space");
		case KVM_EXIT_SHUTDOWN:
			stopped(STATUS_FAILED,
				"shutdown (a triple fault, or an exception "
				"KVM could not deliver)");
		case KVM_EXIT_FAIL_ENTRY:
			stopped(STATUS_FAILED,
				"VM entry failed, hardware reason 0x%llx",
				(unsigned long long)run->fail_entry
					.hardware_entry_failure_reason);
		case KVM_EXIT_INTERNAL_ERROR:
			stopped(STATUS_FAILED, "KVM internal error, suberror %u",
				run->internal.suberror);
		default:
			stopped(STATUS_FAILED, "an exit KVM gives user space "
					       "and this program does not "
					       "handle: reason %u",
				run->exit_reason);
		}
	}
}
