/*
 * The stub guest: a PVH-bootable ELF of a few hundred bytes that prints
 * "vpod-stub: ready" on COM1 and then either resets the VM through the i8042
 * controller (then halts, should the reset be ignored) or, built with -DIDLE, halts forever with interrupts off.
 * Built with -DSECCOMP_PROBE it writes to port 0x3f2 (the seccomp-probe build of vpod-vmm
 * then dies by SIGSYS) and halts.
 *
 * PVH entry (the Xen PVH boot ABI that KVM VMMs reuse): 32-bit protected mode,
 * flat segments, paging off, %ebx pointing at the start info. The ELF note
 * XEN_ELFNOTE_PHYS32_ENTRY (type 18) gives the entry's physical address.
 * It needs no memory beyond its own code, so it runs on any /dev/kvm.
 */
	.section .note.Xen, "a", @note
	.balign 4
	.long 4			/* name size: "Xen\0" */
	.long 4			/* descriptor size */
	.long 18		/* XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz "Xen"
	.balign 4
	.long _start

	.text
	.code32
	.globl _start
_start:
	cli
	mov	$message, %esi
	mov	$0x3f8, %dx		/* COM1 data register */
1:	lodsb
	test	%al, %al
	jz	2f
	outb	%al, %dx
	jmp	1b
2:
#ifdef SECCOMP_PROBE
	/*
	 * The seccomp-probe build of vpod-vmm calls a system call in no
	 * filter when this port is written: it dies by SIGSYS. Then idle.
	 */
	mov	$0x3f2, %dx
	outb	%al, %dx
5:	hlt
	jmp	5b
#endif
#ifdef IDLE
3:	hlt
	jmp	3b
#else
	mov	$0xfe, %al		/* i8042: pulse the CPU reset line */
	outb	%al, $0x64
	/*
	 * A machine without an i8042 (QEMU microvm) ignores that; QEMU's
	 * isa-debug-exit device at port 0xf4, where a benchmark adds it, ends
	 * QEMU instead (with status 1). Other VMMs ignore the write.
	 */
	xor	%al, %al
	outb	%al, $0xf4
4:	hlt
	jmp	4b
#endif

message:
	.asciz "vpod-stub: ready\n"
