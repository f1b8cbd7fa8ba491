//! Process events from the tracepoints, and the socket-owner map used to attribute flows.

/// Length of a task's `comm`.
pub const COMM_LEN: usize = 16;
/// Bytes of the executable path kept in exec events.
pub const PATH_LEN: usize = 128;

/// [`ProcEvent::kind`] values.
pub mod kind {
    pub const EXEC: u8 = 1;
    pub const EXIT: u8 = 2;
    pub const CONNECT: u8 = 3;
    pub const ACCEPT: u8 = 4;
    pub const TCP_STATE: u8 = 5;
}

/// One process event as it crosses the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct ProcEvent {
    /// CLOCK_MONOTONIC, ns.
    pub ts_ns: u64,
    pub cgroup_id: u64,
    /// Thread-group id (what user space calls the pid).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Parent pid when known (0 otherwise; user space fills it from /proc).
    pub ppid: u32,
    pub uid: u32,
    /// Syscall result for connect/accept (new fd or -errno); new TCP state for TCP_STATE.
    pub result: i32,
    /// Old TCP state for TCP_STATE, else 0.
    pub old_state: i32,
    /// Peer (remote) and local endpoints, when the event has them. IPv4 in the first 4 bytes.
    pub peer_addr: [u8; 16],
    pub local_addr: [u8; 16],
    pub peer_port: u16,
    pub local_port: u16,
    /// 4, 6, or 0 when the event has no address.
    pub family: u8,
    /// [`kind`] value.
    pub kind: u8,
    pub protocol: u8,
    pub _pad: u8,
    pub comm: [u8; COMM_LEN],
    /// Executable path for EXEC (NUL-terminated, truncated), else empty.
    pub path: [u8; PATH_LEN],
}

impl ProcEvent {
    pub const ZERO: Self = Self {
        ts_ns: 0,
        cgroup_id: 0,
        pid: 0,
        tid: 0,
        ppid: 0,
        uid: 0,
        result: 0,
        old_state: 0,
        peer_addr: [0; 16],
        local_addr: [0; 16],
        peer_port: 0,
        local_port: 0,
        family: 0,
        kind: 0,
        protocol: 0,
        _pad: 0,
        comm: [0; COMM_LEN],
        path: [0; PATH_LEN],
    };
}

/// Key of the `SOCKETS` map: a TCP socket's endpoints as the owning host sees them. A listening
/// socket has a zero remote side.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SockKey {
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
    pub family: u8,
    pub protocol: u8,
    pub _pad: [u8; 2],
}

/// Value of the `SOCKETS` map: who opened the socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SockOwner {
    pub pid: u32,
    pub uid: u32,
    pub comm: [u8; COMM_LEN],
}
