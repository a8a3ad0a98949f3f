import SystemPackage

/// A failed system or library call: which call, and the errno it left.
public struct SystemCallError: Error, Equatable, Sendable, CustomStringConvertible {
    public let call: String
    public let errno: Errno

    public init(call: String, errno: Errno) {
        self.call = call
        self.errno = errno
    }

    public init(call: String, code: Int32) {
        self.init(call: call, errno: Errno(rawValue: code))
    }

    public var description: String { "\(call): \(errno) (errno \(errno.rawValue))" }
}
