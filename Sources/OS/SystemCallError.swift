import SystemPackage

/// A failed system or library call: which call, the errno it left, and the kernel interface it
/// belongs to, by type: a caller tells an absent conntrack from a failing sock_diag by the layer,
/// never by the call's name.
public struct SystemCallError: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Layer: Sendable, Equatable {
        case sockDiag
        case conntrack
        /// rtnetlink: links, neighbours, routes.
        case route
        /// Files, namespaces, threads, capabilities: the OS itself.
        case system
    }

    /// The call as errors and log lines name it, with what it was applied to: `setns(/run/netns/a)`,
    /// `SOCK_DESTROY`, `IPCTNL_MSG_CT_DELETE (filtered flush)`.
    public let call: String
    /// The function or request alone (`setns`): a metrics label that is one series per call,
    /// whatever path it was given, without taking `call` apart.
    public let name: String
    public let errno: Errno
    public let layer: Layer
    /// The netlink request that failed, by type: nil for any other call.
    public let operation: NetlinkOperation?

    /// `argument`: what the call was applied to (a path, an option), shown as `name(argument)`.
    public init(call name: String, argument: String? = nil, errno: Errno, layer: Layer = .system) {
        self.call = argument.map { "\(name)(\($0))" } ?? name
        self.name = name
        self.errno = errno
        self.layer = layer
        self.operation = nil
    }

    /// A netlink request the kernel refused; its layer is the operation's.
    public init(_ operation: NetlinkOperation, errno: Errno, detail: String? = nil) {
        self.call = detail.map { "\(operation.rawValue) (\($0))" } ?? operation.rawValue
        self.name = operation.rawValue
        self.errno = errno
        self.layer = operation.layer
        self.operation = operation
    }

    public init(_ operation: NetlinkOperation, code: Int32, detail: String? = nil) {
        self.init(operation, errno: Errno(rawValue: code), detail: detail)
    }

    public init(call name: String, argument: String? = nil, code: Int32, layer: Layer = .system) {
        self.init(call: name, argument: argument, errno: Errno(rawValue: code), layer: layer)
    }

    public var description: String { "\(call): \(errno) (errno \(errno.rawValue))" }
}
