//! Building a micro-VM, as one linear recipe:
//!
//! 1. open KVM and create the VM,
//! 2. guest memory (a shared memfd only when a vhost-user device must map it), registered
//!    with KVM at once,
//! 3. the in-kernel IRQ chip and PIT, then the vCPUs (CPUID, MSRs, FPU, local APIC),
//! 4. devices (COM1, i8042, boot ports, virtio-blk disks and empty disk slots, virtio-vsock,
//!    virtio-net NICs on taps, virtio-fs shares served by vhost-user backends, the
//!    virtio-balloon, all over MMIO),
//! 5. load the kernel, the initrd and the command line,
//! 6. configure boot (MP table, PVH start info or zero page, entry registers),
//! 7. start the vCPU threads (paused until [`MicroVm::run`]), each under the vCPU seccomp
//!    filter unless seccomp is off,
//! 8. the event loop, with every virtio device (each registers its own descriptors), the
//!    control socket and the sharer of the boot files ([`crate::vstate::boot_share`]),
//!    which a few seconds later pauses the vCPUs and maps the kernel and initrd files over
//!    the guest pages that still hold their bytes.
//!
//! The main thread's own filter comes last, from the caller ([`MicroVm::confine_main_thread`]),
//! once nothing else is left to build.

use std::fs::File;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};

use kvm_bindings::{kvm_pit_config, CpuId, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VcpuFd, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::api::{ApiServer, ApiServerError, BlockHandle, VmControl};
use crate::arch::boot::{write_linux_boot, write_pvh_boot, BootError, BootInputs};
use crate::arch::cpuid::vcpu_cpuid;
use crate::arch::kernel::{load_initrd, load_kernel, write_cmdline, KernelError, LoadedKernel};
use crate::arch::layout::{
    self, ram_ranges, virtio_mmio_slot, CMDLINE_MAX_SIZE, KVM_TSS_ADDRESS, SERIAL_IRQ,
    VIRTIO_IRQ_FIRST, VIRTIO_MMIO_SLOTS,
};
use crate::arch::mptable::{setup_mptable, MptableError};
use crate::arch::regs::{self, BootProtocol, RegsError};
use crate::cmdline::{kernel_cmdline, with_defaults, CmdlineError, MmioDeviceEntry};
use crate::config::{ConsoleConfig, InitrdConfig, VmConfig};
use crate::devices::bus::BusError;
use crate::devices::legacy::{
    serial::ConsoleOutput, BootPort, ConsoleSink, SerialDevice, BOOT_PORT_BASE, BOOT_PORT_LEN,
    I8042, I8042_PORT_BASE, I8042_PORT_LEN, SERIAL_PORT_BASE, SERIAL_PORT_LEN,
};
use crate::devices::virtio::balloon::{reporting_order_param, BalloonDevice};
use crate::devices::virtio::block::{BlockDevice, BlockError};
use crate::devices::virtio::event_handler::VirtioEvents;
use crate::devices::virtio::fs::{FsDevice, FsError};
use crate::devices::virtio::mmio::{MmioError, MMIO_WINDOW_SIZE, QUEUE_NOTIFY_OFFSET};
use crate::devices::virtio::net::{NetDevice, NetError, NetMetrics};
use crate::devices::virtio::vsock::{VsockDevice, VsockError, VsockMetrics};
use crate::devices::virtio::{MmioInterrupt, MmioTransport, VirtioDevice};
use crate::devices::Bus;
use crate::event_loop::{EventLoop, EventLoopError, Subscriber, TerminationSignals};
use crate::lifecycle::{GuestEvents, StopReason, VmOutcome};
use crate::seccomp::{self, SeccompError, SeccompFilters, ThreadKind};
use crate::vstate::boot_share::{BootFileSharer, BootFiles, SHARE_AFTER};
use crate::vstate::memory::{
    create_guest_memory, create_shared_guest_memory, register_guest_memory, MemoryError,
    SharedBacking,
};
use crate::vstate::vcpu::{
    install_kick_handler, Vcpu, VcpuError, VcpuHandle, VcpuMessage, VcpuPauser,
};

/// Errors building or running a VM. Each names its cause in one sentence.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot open /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("cannot create the VM")]
    CreateVm(#[source] kvm_ioctls::Error),
    #[error("KVM cannot {0}")]
    VmSetup(&'static str, #[source] kvm_ioctls::Error),
    #[error("cannot create vCPU {0}")]
    CreateVcpu(u8, #[source] kvm_ioctls::Error),
    #[error("cannot set up vCPU {0}")]
    VcpuRegs(u8, #[source] RegsError),
    #[error("cannot set the CPUID of vCPU {0}: {1}")]
    Cpuid(u8, String),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Cmdline(#[from] CmdlineError),
    #[error(transparent)]
    Mptable(#[from] MptableError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error(transparent)]
    Mmio(#[from] MmioError),
    #[error(transparent)]
    Vsock(#[from] VsockError),
    #[error("nic {0}")]
    Net(usize, #[source] NetError),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Api(#[from] ApiServerError),
    #[error(transparent)]
    EventLoop(#[from] EventLoopError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("cannot place a device on the bus")]
    Bus(#[from] BusError),
    #[error(
        "at most {0} virtio devices (disks, disk slots, vsock, nics, fs shares and the balloon) are supported"
    )]
    TooManyDisks(u32),
    #[error("cannot open the console file {0}")]
    ConsoleFile(PathBuf, #[source] std::io::Error),
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
}

/// A built VM, its vCPUs started but paused.
pub struct MicroVm {
    // Field order is drop order: vCPU threads end before the VM and its memory go away.
    vcpus: Vec<VcpuHandle>,
    event_loop: EventLoop,
    serial: Arc<Mutex<SerialDevice>>,
    events: Arc<GuestEvents>,
    /// The main thread's filter, installed by [`Self::confine_main_thread`].
    main_seccomp: Option<seccomp::BpfProgram>,
    _transports: Vec<Arc<Mutex<MmioTransport>>>,
    _vm: VmFd,
    _memory: Arc<GuestMemoryMmap>,
}

/// The devices attached in step 4.
struct Devices {
    pio_bus: Bus,
    mmio_bus: Bus,
    serial: Arc<Mutex<SerialDevice>>,
    transports: Vec<Arc<Mutex<MmioTransport>>>,
    cmdline_entries: Vec<MmioDeviceEntry>,
    /// Kernel parameters the devices ask for, unless the base line sets them.
    kernel_params: Vec<String>,
    blocks: Vec<BlockHandle>,
    balloon: Option<Arc<Mutex<MmioTransport>>>,
    vsock_metrics: Option<Arc<VsockMetrics>>,
    net_metrics: Vec<Arc<NetMetrics>>,
    /// The host sides of the virtio devices that watch descriptors of their own.
    host_events: Vec<Box<dyn Subscriber>>,
}

/// Builds the VM `config` describes.
pub fn build_microvm(
    config: &VmConfig,
    events: Arc<GuestEvents>,
    signals: TerminationSignals,
) -> Result<MicroVm, BuildError> {
    let (kvm, vm) = create_vm()?;
    let memory_size = config.memory_mib << 20;
    let (memory, backing) = create_memory(config.memory_mib, !config.fs.is_empty(), config.ksm)?;
    // The boot files' pages are shared once booted, except on reserved huge pages, which
    // the files' 4 KiB pages cannot overlay.
    let shareable = !config.private_boot_files && backing != Some(SharedBacking::HugeTlb);
    let memory = Arc::new(memory);
    // Before the IRQ chip: on kvm_pvm hosts the first memory slot of a VM that already has
    // one takes 4 to 10 ms, against about 0.1 ms before it (measured apart: KVM_CREATE_VM,
    // KVM_SET_TSS_ADDR, then the slot, against the slot after KVM_CREATE_IRQCHIP).
    register_guest_memory(&vm, &memory)?;
    create_interrupt_controllers(&vm)?;
    // Compiling the seccomp filters (about half a millisecond) overlaps steps 3 to 6: they
    // are needed only from step 7.
    let (vcpu_fds, devices, boot_files, filters) = std::thread::scope(|scope| {
        let compiled = config.seccomp.then(|| scope.spawn(SeccompFilters::prepare));
        let built = (|| {
            let vcpu_fds = create_vcpus(&kvm, &vm, config.vcpus)?;
            let devices = attach_devices(&vm, &memory, backing, config, &events)?;
            let (kernel, kernel_file) = load_kernel(&memory, &config.kernel)?;
            let initrd = load_initrd_if_any(&memory, memory_size, &kernel, &config.initrd)?;
            let (initrd, initrd_file) = match initrd {
                Some((start, size, file)) => (Some((start, size)), Some(file)),
                None => (None, None),
            };
            let mut params = devices.kernel_params.clone();
            // Over a shared memfd, the initrd's pages are shared only where the guest keeps
            // them in place, its kernel's copy of the initrd included.
            if shareable && backing.is_some() && config.initrd_pages_stay && initrd.is_some() {
                params.push("retain_initrd".to_string());
            }
            let cmdline = kernel_cmdline(
                &with_defaults(&config.cmdline, &params),
                &devices.cmdline_entries,
                &config.init_args,
                CMDLINE_MAX_SIZE,
            )?;
            write_cmdline(&memory, &cmdline)?;
            configure_boot(
                &memory,
                &vcpu_fds,
                &kernel,
                memory_size,
                cmdline.len(),
                initrd,
            )?;
            let files = BootFiles {
                kernel: Some(kernel_file),
                initrd: initrd_file,
                initrd_pages_stay: config.initrd_pages_stay,
                initrd_at: initrd,
            };
            Ok::<_, BuildError>((vcpu_fds, devices, files))
        })();
        let filters = compiled
            .map(|thread| thread.join().unwrap_or(Err(SeccompError::CompileThread)))
            .transpose();
        let (vcpu_fds, devices, files) = built?;
        Ok::<_, BuildError>((vcpu_fds, devices, files, filters?))
    })?;
    let vcpu_filter = filters
        .as_ref()
        .map(|filters| Arc::new(filters.program(ThreadKind::Vcpu).clone()));
    let (vcpus, paused) = start_vcpus(
        vcpu_fds,
        devices.pio_bus,
        devices.mmio_bus,
        &events,
        vcpu_filter,
    )?;

    let mut event_loop = EventLoop::new(events.clone(), signals)?;
    if shareable && (boot_files.kernel.is_some() || boot_files.initrd.is_some()) {
        let pauser = VcpuPauser::new(
            vcpus.iter().filter_map(VcpuHandle::remote).collect(),
            paused,
        );
        let sharer = BootFileSharer::new(
            memory.clone(),
            boot_files,
            backing.is_some(),
            pauser,
            events.clone(),
            SHARE_AFTER,
        )
        .map_err(|e| BuildError::EventLoop(EventLoopError::Timer(e)))?;
        event_loop.add(Box::new(sharer))?;
    }
    for transport in &devices.transports {
        event_loop.add(Box::new(VirtioEvents::new(transport.clone())))?;
    }
    for host_side in devices.host_events {
        event_loop.add(host_side)?;
    }
    if let Some(path) = &config.api_socket {
        let control = VmControl {
            events: events.clone(),
            vcpus: config.vcpus,
            memory_mib: config.memory_mib,
            blocks: devices.blocks,
            balloon: devices.balloon,
            vsock: devices.vsock_metrics,
            nets: devices.net_metrics,
            stop_deadline: None,
        };
        event_loop.add(Box::new(ApiServer::new(path, control)?))?;
    }
    Ok(MicroVm {
        vcpus,
        event_loop,
        serial: devices.serial,
        events,
        main_seccomp: filters.map(|filters| filters.program(ThreadKind::Main).clone()),
        _transports: devices.transports,
        _vm: vm,
        _memory: memory,
    })
}

/// Step 1: KVM and the VM.
fn create_vm() -> Result<(Kvm, VmFd), BuildError> {
    let kvm = Kvm::new().map_err(BuildError::OpenKvm)?;
    let vm = kvm.create_vm().map_err(BuildError::CreateVm)?;
    vm.set_tss_address(KVM_TSS_ADDRESS as usize)
        .map_err(|e| BuildError::VmSetup("set the TSS address", e))?;
    Ok((kvm, vm))
}

/// Step 3, first half: the VM's interrupt controllers and timer (after its memory slots,
/// before its vCPUs).
fn create_interrupt_controllers(vm: &VmFd) -> Result<(), BuildError> {
    vm.create_irq_chip()
        .map_err(|e| BuildError::VmSetup("create the in-kernel IRQ chip", e))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit)
        .map_err(|e| BuildError::VmSetup("create the in-kernel PIT", e))
}

/// Step 2: guest RAM (registered with KVM right after): private anonymous
/// memory, or a memfd that vhost-user backends can map when `shared` (with what backs it).
fn create_memory(
    memory_mib: u64,
    shared: bool,
    mergeable: bool,
) -> Result<(GuestMemoryMmap, Option<SharedBacking>), BuildError> {
    let ranges = ram_ranges(memory_mib << 20);
    if shared {
        let (memory, backing) = create_shared_guest_memory(&ranges, memory_mib)?;
        return Ok((memory, Some(backing)));
    }
    Ok((create_guest_memory(&ranges, memory_mib, mergeable)?, None))
}

/// Step 3, second half: the vCPUs with their CPUID, MSRs, FPU and local APIC.
fn create_vcpus(kvm: &Kvm, vm: &VmFd, count: u8) -> Result<Vec<VcpuFd>, BuildError> {
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| BuildError::VmSetup("report its supported CPUID", e))?;
    let tsc_deadline = kvm.check_extension(Cap::TscDeadlineTimer);
    (0..count)
        .map(|id| {
            let fd = vm
                .create_vcpu(u64::from(id))
                .map_err(|e| BuildError::CreateVcpu(id, e))?;
            let entries = vcpu_cpuid(supported.as_slice(), id, count, tsc_deadline);
            let cpuid = CpuId::from_entries(&entries)
                .map_err(|e| BuildError::Cpuid(id, format!("{e:?}")))?;
            fd.set_cpuid2(&cpuid)
                .map_err(|e| BuildError::Cpuid(id, e.to_string()))?;
            regs::setup_msrs(&fd).map_err(|e| BuildError::VcpuRegs(id, e))?;
            regs::setup_fpu(&fd).map_err(|e| BuildError::VcpuRegs(id, e))?;
            regs::setup_lapic(&fd).map_err(|e| BuildError::VcpuRegs(id, e))?;
            Ok(fd)
        })
        .collect()
}

fn irq_eventfd(vm: &VmFd, gsi: u32) -> Result<EventFd, BuildError> {
    let event = EventFd::new(EFD_NONBLOCK).map_err(BuildError::EventFd)?;
    vm.register_irqfd(&event, gsi)
        .map_err(|e| BuildError::VmSetup("connect a device interrupt", e))?;
    Ok(event)
}

fn console_sink(config: &ConsoleConfig) -> Result<ConsoleSink, BuildError> {
    Ok(match config {
        ConsoleConfig::Stdio => ConsoleSink::Stdout,
        ConsoleConfig::Off => ConsoleSink::Discard,
        ConsoleConfig::File(path) => ConsoleSink::File(
            File::create(path).map_err(|e| BuildError::ConsoleFile(path.clone(), e))?,
        ),
    })
}

/// Step 4: legacy devices on the I/O bus, virtio devices on the MMIO bus.
fn attach_devices(
    vm: &VmFd,
    memory: &Arc<GuestMemoryMmap>,
    backing: Option<SharedBacking>,
    config: &VmConfig,
    events: &Arc<GuestEvents>,
) -> Result<Devices, BuildError> {
    let mut pio_bus = Bus::new();
    let output = ConsoleOutput::new(console_sink(&config.console)?, events.clone());
    let serial = Arc::new(Mutex::new(SerialDevice::new(
        irq_eventfd(vm, SERIAL_IRQ)?,
        output,
    )));
    pio_bus.insert(serial.clone(), SERIAL_PORT_BASE, SERIAL_PORT_LEN)?;
    pio_bus.insert(
        Arc::new(Mutex::new(I8042::new(events.clone()))),
        I8042_PORT_BASE,
        I8042_PORT_LEN,
    )?;
    pio_bus.insert(
        Arc::new(Mutex::new(BootPort::new(events.clone()))),
        BOOT_PORT_BASE,
        BOOT_PORT_LEN,
    )?;

    let device_count = config.disks.len()
        + config.disk_slots as usize
        + usize::from(config.vsock.is_some())
        + config.net.len()
        + config.fs.len()
        + usize::from(config.balloon.is_some());
    if device_count > VIRTIO_MMIO_SLOTS as usize {
        return Err(BuildError::TooManyDisks(VIRTIO_MMIO_SLOTS));
    }
    let mut virtio = VirtioDevices {
        mmio_bus: Bus::new(),
        transports: Vec::new(),
        cmdline_entries: Vec::new(),
        host_events: Vec::new(),
    };
    let mut blocks = Vec::new();
    for disk in &config.disks {
        let transport = virtio.attach(vm, memory, Box::new(BlockDevice::open(disk)?))?;
        blocks.push(BlockHandle {
            transport,
            slot: None,
        });
    }
    for slot in 0..config.disk_slots {
        let transport = virtio.attach(vm, memory, Box::new(BlockDevice::empty_slot()))?;
        blocks.push(BlockHandle {
            transport,
            slot: Some(slot),
        });
    }
    let vsock_metrics = match &config.vsock {
        Some(vsock) => {
            let device = VsockDevice::new(&vsock.uds_path, vsock.guest_cid)?;
            let metrics = device.metrics().clone();
            virtio.attach(vm, memory, Box::new(device))?;
            Some(metrics)
        }
        None => None,
    };
    let mut net_metrics = Vec::new();
    for (index, nic) in config.net.iter().enumerate() {
        let device = NetDevice::new(nic).map_err(|e| BuildError::Net(index, e))?;
        net_metrics.push(device.metrics().clone());
        virtio.attach(vm, memory, Box::new(device))?;
    }
    for share in &config.fs {
        virtio.attach(vm, memory, Box::new(FsDevice::new(share)?))?;
    }
    // Last, so that adding it moves no other device's slot or IRQ.
    let mut kernel_params = Vec::new();
    let balloon = match &config.balloon {
        Some(balloon) => {
            let small_pages = backing == Some(SharedBacking::Shmem);
            kernel_params.extend(reporting_order_param(
                balloon.free_page_reporting,
                small_pages,
            ));
            Some(virtio.attach(vm, memory, Box::new(BalloonDevice::new(balloon)))?)
        }
        None => None,
    };
    let VirtioDevices {
        mmio_bus,
        transports,
        cmdline_entries,
        host_events,
    } = virtio;
    Ok(Devices {
        pio_bus,
        mmio_bus,
        serial,
        transports,
        cmdline_entries,
        kernel_params,
        blocks,
        balloon,
        vsock_metrics,
        net_metrics,
        host_events,
    })
}

/// The virtio-mmio devices placed so far, each in the next slot with the next IRQ.
struct VirtioDevices {
    mmio_bus: Bus,
    transports: Vec<Arc<Mutex<MmioTransport>>>,
    cmdline_entries: Vec<MmioDeviceEntry>,
    host_events: Vec<Box<dyn Subscriber>>,
}

impl VirtioDevices {
    fn attach(
        &mut self,
        vm: &VmFd,
        memory: &Arc<GuestMemoryMmap>,
        mut device: Box<dyn VirtioDevice>,
    ) -> Result<Arc<Mutex<MmioTransport>>, BuildError> {
        self.host_events.extend(device.host_events());
        let slot = self.transports.len() as u32;
        let address = virtio_mmio_slot(slot);
        let irq = VIRTIO_IRQ_FIRST + slot;
        let interrupt = Arc::new(MmioInterrupt::new(irq_eventfd(vm, irq)?));
        let transport = MmioTransport::new(device, memory.clone(), interrupt)?;
        for (queue, event) in transport.queue_events().iter().enumerate() {
            vm.register_ioevent(
                event,
                &IoEventAddress::Mmio(address + QUEUE_NOTIFY_OFFSET),
                queue as u32,
            )
            .map_err(|e| BuildError::VmSetup("register a queue notification", e))?;
        }
        let transport = Arc::new(Mutex::new(transport));
        self.mmio_bus
            .insert(transport.clone(), address, MMIO_WINDOW_SIZE)?;
        self.transports.push(transport.clone());
        self.cmdline_entries.push(MmioDeviceEntry {
            address,
            size: layout::VIRTIO_MMIO_SLOT_SIZE,
            irq,
        });
        Ok(transport)
    }
}

/// Step 5 (part): the initrd, if one was asked for or the default exists.
fn load_initrd_if_any(
    memory: &GuestMemoryMmap,
    memory_size: u64,
    kernel: &LoadedKernel,
    initrd: &InitrdConfig,
) -> Result<Option<(u64, u64, File)>, BuildError> {
    let path = match initrd {
        InitrdConfig::Required(path) => path,
        InitrdConfig::IfPresent(path) if path.exists() => path,
        InitrdConfig::IfPresent(_) | InitrdConfig::None => return Ok(None),
    };
    Ok(Some(load_initrd(memory, memory_size, kernel, path)?))
}

/// Step 6: the MP table, the boot structures and the boot vCPU's entry state.
fn configure_boot(
    memory: &GuestMemoryMmap,
    vcpus: &[VcpuFd],
    kernel: &LoadedKernel,
    memory_size: u64,
    cmdline_len: usize,
    initrd: Option<(u64, u64)>,
) -> Result<(), BuildError> {
    setup_mptable(memory, vcpus.len() as u8)?;
    let inputs = BootInputs {
        memory_size,
        cmdline_len,
        initrd,
    };
    match kernel.protocol {
        BootProtocol::Pvh => write_pvh_boot(memory, &inputs)?,
        BootProtocol::Linux64 => write_linux_boot(memory, &inputs, kernel.setup_header)?,
    }
    // Application processors wait for the guest's INIT/SIPI; only the first one boots.
    if let Some(boot_vcpu) = vcpus.first() {
        regs::setup_sregs(memory, boot_vcpu, kernel.protocol)
            .map_err(|e| BuildError::VcpuRegs(0, e))?;
        regs::setup_regs(boot_vcpu, kernel.protocol, kernel.entry)
            .map_err(|e| BuildError::VcpuRegs(0, e))?;
    }
    Ok(())
}

/// Step 7: one thread per vCPU, paused, each installing `seccomp` (if any) first.
fn start_vcpus(
    fds: Vec<VcpuFd>,
    pio_bus: Bus,
    mmio_bus: Bus,
    events: &Arc<GuestEvents>,
    seccomp: Option<Arc<seccomp::BpfProgram>>,
) -> Result<(Vec<VcpuHandle>, Receiver<u8>), BuildError> {
    install_kick_handler()?;
    let (paused, acks) = channel();
    let pio_bus = Arc::new(pio_bus);
    let mmio_bus = Arc::new(mmio_bus);
    let mut handles = Vec::with_capacity(fds.len());
    for (id, fd) in fds.into_iter().enumerate() {
        let vcpu = Vcpu {
            id: id as u8,
            fd,
            pio_bus: pio_bus.clone(),
            mmio_bus: mmio_bus.clone(),
            events: events.clone(),
            seccomp: seccomp.clone(),
            paused: paused.clone(),
        };
        handles.push(vcpu.start()?);
    }
    Ok((handles, acks))
}

impl MicroVm {
    /// Installs the main thread's seccomp filter (nothing when seccomp is off). Call from
    /// the thread that will [`Self::run`] the VM, last, once every other step that needs
    /// more than the event loop is done.
    pub fn confine_main_thread(&mut self) -> Result<(), BuildError> {
        if let Some(filter) = self.main_seccomp.take() {
            seccomp::apply(ThreadKind::Main, &filter)?;
        }
        Ok(())
    }

    /// Runs the guest until it stops, then stops every vCPU and reports the outcome.
    pub fn run(mut self) -> VmOutcome {
        for vcpu in &self.vcpus {
            vcpu.send(VcpuMessage::Run);
        }
        let reason = self.event_loop.run();
        for vcpu in self.vcpus.iter_mut() {
            vcpu.exit_and_join();
        }
        self.serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .flush_console();
        VmOutcome {
            reason,
            status: self.events.status(),
            panicked: self.events.panicked(),
            init_reached: self.events.init_reached(),
        }
    }

    /// Asks the VM to stop as if `reason` happened (for embedding callers).
    pub fn request_stop(&self, reason: StopReason) {
        self.events.request_stop(reason);
    }
}
