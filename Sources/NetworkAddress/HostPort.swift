/// The one place `host`, `host:port`, `[IPv6]`, `[IPv6]:port` and `:port` are taken apart: a
/// destination on the command line and a server in an nginx upstream are written the same way.
/// Only the split: what the host and the port must be is the caller's to say.
public struct HostPort: Equatable, Sendable {
    /// As written, without brackets: an address, a prefix, a host name, or empty (`:port`).
    public let host: Substring
    /// The text after the colon that separates it, if there is one; not yet a number.
    public let port: Substring?

    public enum SplitError: Error, Equatable, Sendable, CustomStringConvertible {
        case missingClosingBracket
        /// `[fd00::1]6443`: something other than `:PORT` after the bracket.
        case textAfterBracket

        public var description: String {
            switch self {
            case .missingClosingBracket: "missing ']' after IPv6 address"
            case .textAfterBracket: "expected ':PORT' after ']'"
            }
        }
    }

    /// An IPv6 address carries a port only inside brackets: more than one colon outside them is a
    /// bare IPv6 address, never an address and a port.
    public init(splitting text: Substring) throws(SplitError) {
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { throw .missingClosingBracket }
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.isEmpty || rest.hasPrefix(":") else { throw .textAfterBracket }
            port = rest.isEmpty ? nil : rest.dropFirst()
        } else if let colon = text.firstIndex(of: ":"), !text[text.index(after: colon)...].contains(":") {
            host = text[..<colon]
            port = text[text.index(after: colon)...]
        } else {
            host = text
            port = nil
        }
    }
}
