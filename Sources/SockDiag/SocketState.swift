/// TCP states as the kernel numbers them (include/net/tcp_states.h); connected UDP sockets report
/// `established`, unconnected ones `close`.
public enum SocketState: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    case established = 1, synSent, synReceived, finWait1, finWait2, timeWait, close, closeWait, lastAck, listen, closing

    public var description: String {
        switch self {
        case .established: "ESTAB"
        case .synSent: "SYN-SENT"
        case .synReceived: "SYN-RECV"
        case .finWait1: "FIN-WAIT-1"
        case .finWait2: "FIN-WAIT-2"
        case .timeWait: "TIME-WAIT"
        case .close: "UNCONN"
        case .closeWait: "CLOSE-WAIT"
        case .lastAck: "LAST-ACK"
        case .listen: "LISTEN"
        case .closing: "CLOSING"
        }
    }

    /// Names accepted on the command line, as `ss` spells its state filters.
    public init?(name: String) {
        let normalized = String(name.lowercased().map { $0 == "_" ? "-" : $0 })
        guard let match = Self.allCases.first(where: { $0.filterName == normalized }) else { return nil }
        self = match
    }

    public var filterName: String {
        switch self {
        case .established: "established"
        case .synSent: "syn-sent"
        case .synReceived: "syn-recv"
        case .finWait1: "fin-wait-1"
        case .finWait2: "fin-wait-2"
        case .timeWait: "time-wait"
        case .close: "close"
        case .closeWait: "close-wait"
        case .lastAck: "last-ack"
        case .listen: "listen"
        case .closing: "closing"
        }
    }
}

/// The set of states a dump asks the kernel for, as its `idiag_states` bit mask.
public struct SocketStates: Sendable, Hashable {
    public private(set) var mask: UInt32

    /// ESTABLISHED carries the stalled streams; SYN_SENT is a connect() into a dead backend, which
    /// would otherwise wait out the owner's connect timeout. Nothing else holds a peer worth reaping.
    public static let reapByDefault = SocketStates([.established, .synSent])

    /// LISTEN is never asked for: destroying a listener closes a server's port. TIME_WAIT sockets
    /// own nothing and are not destroyable through sock_diag anyway.
    public static let neverReaped: Set<SocketState> = [.listen, .timeWait]

    public init(_ states: some Sequence<SocketState>) {
        mask = states.filter { !Self.neverReaped.contains($0) }.reduce(0) { $0 | 1 << UInt32($1.rawValue) }
    }

    /// Listeners, only to read which local ports accept connections (`SocketDiagnostics.listeningEndpoints`):
    /// no request built from it returns a socket that could be destroyed.
    static let listenersOnly = SocketStates(mask: 1 << UInt32(SocketState.listen.rawValue))

    private init(mask: UInt32) { self.mask = mask }

    public func contains(_ state: SocketState) -> Bool { mask & 1 << UInt32(state.rawValue) != 0 }

    public var states: [SocketState] { SocketState.allCases.filter(contains) }
}

extension SocketStates: CustomStringConvertible {
    /// As `--state` takes them: `established,syn-sent`.
    public var description: String { states.map(\.filterName).joined(separator: ",") }
}

/// What is wrong with a list of states a user wrote, naming the word at fault.
public struct SocketStatesParseError: Error, Equatable, CustomStringConvertible {
    public enum Reason: Equatable, Sendable {
        case unknown(String)
        /// Only states that are never reaped (listen, time-wait): a purge would match nothing.
        case nothingReapable
    }

    public let input: String
    public let reason: Reason

    public var description: String {
        switch reason {
        case .unknown(let name):
            "unknown state '\(name)' (known: \(SocketState.allCases.map(\.filterName).joined(separator: ", ")))"
        case .nothingReapable:
            "'\(input)' leaves no state to match: "
                + "\(SocketStates.neverReaped.map(\.filterName).sorted().joined(separator: " and ")) are never reaped"
        }
    }
}

extension SocketStates {
    /// Comma-separated names as `ss` spells its state filters (`established,syn-sent`). States that
    /// are never reaped are dropped; a list of nothing else is refused rather than matching nothing.
    public init(parsing text: String) throws(SocketStatesParseError) {
        var parsed: [SocketState] = []
        for word in text.split(separator: ",") {
            let name = String(word.trimmingPrefix(while: \.isWhitespace))
            guard let state = SocketState(name: name) else { throw SocketStatesParseError(input: text, reason: .unknown(name)) }
            parsed.append(state)
        }
        self.init(parsed)
        guard !states.isEmpty else { throw SocketStatesParseError(input: text, reason: .nothingReapable) }
    }
}
