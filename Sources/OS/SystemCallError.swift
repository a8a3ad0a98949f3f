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

    public let call: String
    public let errno: Errno
    public let layer: Layer

    public init(call: String, errno: Errno, layer: Layer = .system) {
        self.call = call
        self.errno = errno
        self.layer = layer
    }

    public init(call: String, code: Int32, layer: Layer = .system) {
        self.init(call: call, errno: Errno(rawValue: code), layer: layer)
    }

    public var description: String { "\(call): \(errno) (errno \(errno.rawValue))" }
}
