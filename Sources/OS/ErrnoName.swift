import SystemPackage

extension Errno {
    /// The errno as the C headers name it (`EPERM`), the one spelling metrics labels and log lines
    /// use; `errno_N` for one this program has no reason to name.
    public var symbolicName: String {
        switch self {
        case .notPermitted: "EPERM"
        case .noSuchFileOrDirectory: "ENOENT"
        case .noSuchProcess: "ESRCH"
        case .interrupted: "EINTR"
        case .badFileDescriptor: "EBADF"
        case .resourceTemporarilyUnavailable: "EAGAIN"
        case .noMemory: "ENOMEM"
        case .permissionDenied: "EACCES"
        case .resourceBusy: "EBUSY"
        case .invalidArgument: "EINVAL"
        case .tooManyOpenFilesInSystem: "ENFILE"
        case .tooManyOpenFiles: "EMFILE"
        case .protocolNotSupported: "EPROTONOSUPPORT"
        case .notSupported: "EOPNOTSUPP"
        case .addressNotAvailable: "EADDRNOTAVAIL"
        case .networkUnreachable: "ENETUNREACH"
        case .connectionAbort: "ECONNABORTED"
        case .connectionReset: "ECONNRESET"
        case .noBufferSpace: "ENOBUFS"
        case .timedOut: "ETIMEDOUT"
        case .connectionRefused: "ECONNREFUSED"
        case .noRouteToHost: "EHOSTUNREACH"
        default: "errno_\(rawValue)"
        }
    }
}
