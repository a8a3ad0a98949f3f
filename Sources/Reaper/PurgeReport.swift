import NetworkAddress
import SockDiag
import OS
import Conntrack
import SystemPackage

/// What a purge or list found and did, in a form the CLI prints and the agent logs.
public struct PurgeReport: Sendable {
    public enum Outcome: Sendable, Equatable {
        case ended
        case wouldEnd
        case listed
        case failed(SystemCallError)
        case unconfirmed
        /// The kernel no longer had it (ENOENT): closed or expired between the dump and the destroy.
        case alreadyGone
    }

    public struct SocketResult: Sendable {
        public var socket: DiagnosedSocket
        public var outcome: Outcome
        /// Found through a conntrack entry whose reply source is a destination: the socket itself
        /// names only where it sent (a Service VIP a NAT rewrote).
        public var throughConntrack = false
        /// The namespace file it was found through (`--netns`, `netns:`); nil for the caller's own.
        public var namespace: String?

        public init(socket: DiagnosedSocket, outcome: Outcome, throughConntrack: Bool = false, namespace: String? = nil) {
            self.socket = socket
            self.outcome = outcome
            self.throughConntrack = throughConntrack
            self.namespace = namespace
        }
    }

    public struct ConntrackResult: Sendable {
        public var entry: ConntrackEntry
        public var matchedBy: DestinationMatcher.ConntrackMatch
        public var outcome: Outcome
        public var namespace: String?
        /// Deleted by a filtered flush, which names no entry: listed from the dump made before it.
        public var byFlush = false
    }

    public var sockets: [SocketResult] = []
    public var conntrack: [ConntrackResult] = []
    /// Failures of a whole step (a dump refused, a layer unavailable), as opposed to one item's.
    public var stepErrors: [SystemCallError] = []
    /// The socket table could not be opened or walked to its end: what it lists is not all there is.
    /// (A conntrack failure leaves the socket walk whole: only NAT'd flows go unnamed.)
    public var socketWalkFailed = false
    /// Dumps repeated because acks were lost or the kernel flagged a dump inconsistent.
    public var extraRounds = 0
    /// Filtered flushes the kernel carried out (each deletes every entry one side of a destination names).
    public var conntrackFlushes = 0
    /// Entries a flush deleted that no dump listed (direct flows of a large purge), counted by the
    /// table's size before and after: what else came or went meanwhile moves it too.
    public var conntrackFlushedUnlisted = 0
    /// Entries the dumps listed toward the destinations in zones the purge did not select
    /// (`ConntrackZones`): left. Direct flows a flush took unlisted are not among them.
    public var conntrackInOtherZones = 0
    /// Matching sockets not destroyed because of `Purger.Options.socketLimit`.
    public var socketsLeftByLimit = 0
    /// Their flows: their conntrack entries stay until they go, so their RST is still reverse-NATed.
    var flowsLeftByLimit: Set<Flow> = []
    /// The flows of this process's own sockets that matched and were spared (the agent's probes):
    /// their conntrack entries stay too, and no flush may be sent that would take them.
    var ownFlows: Set<Flow> = []
    /// Trouble with the kernel interfaces that the purge rode out (a dump begun again, an ack lost),
    /// counted by what and why; failures are in `stepErrors` and the items' outcomes instead.
    public var troubles: [NetlinkTrouble: Int] = [:]
    public var durationSeconds: Double = 0

    public init() {}

    /// Adds another namespace's report: its items labelled with `namespace`, its counts summed.
    public mutating func absorb(_ other: PurgeReport, namespace: String?) {
        sockets += other.sockets.map {
            var result = $0; result.namespace = namespace; return result
        }
        conntrack += other.conntrack.map {
            var result = $0; result.namespace = namespace; return result
        }
        stepErrors += other.stepErrors
        socketWalkFailed = socketWalkFailed || other.socketWalkFailed
        extraRounds += other.extraRounds
        conntrackFlushes += other.conntrackFlushes
        conntrackFlushedUnlisted += other.conntrackFlushedUnlisted
        conntrackInOtherZones += other.conntrackInOtherZones
        socketsLeftByLimit += other.socketsLeftByLimit
        troubles.merge(other.troubles, uniquingKeysWith: +)
        durationSeconds += other.durationSeconds
    }

    public var socketsEnded: Int { sockets.count { $0.outcome == .ended } }
    /// What a socket limit counts: the sockets it ended, or would end (a dry run, a list). A refused
    /// or unconfirmed destroy ended nothing, and the budget behind the limit is charged only what ended.
    public var socketsCountedByLimit: Int { sockets.count { [.ended, .wouldEnd, .listed].contains($0.outcome) } }
    /// Destroys and deletes whose ack was lost and whose socket or entry was still there at the last
    /// look: not ended, and counted as trouble (`NetlinkCondition.acksLost`), not as refused.
    public var unconfirmed: Int { sockets.count { $0.outcome == .unconfirmed } + conntrack.count { $0.outcome == .unconfirmed } }
    /// Listed entries deleted, and those a flush took unlisted.
    public var conntrackDeleted: Int { conntrack.count { $0.outcome == .ended } + conntrackFlushedUnlisted }

    /// Flows it ended by their conntrack entry alone, with no socket of this host behind them
    /// (forwarded or translated through it): their clients reconnect like a destroyed socket's. Not
    /// an ended socket's own entry, nor one of a connection already closing (TIME_WAIT, CLOSE,
    /// LAST_ACK), which ends nothing. Entries a flush took unlisted are local sockets' (see
    /// `conntrackFlushedUnlisted`).
    public var flowsEndedByEntryAlone: Int {
        let socketFlows = Set(sockets.filter { $0.outcome == .ended }.map { Flow($0.socket) })
        return conntrack.count { result in
            result.outcome == .ended && !socketFlows.contains(Flow(result.entry)) && !Self.closing(result.entry)
        }
    }

    /// conntrack's TCP states LAST_ACK (6), TIME_WAIT (7) and CLOSE (8).
    static func closing(_ entry: ConntrackEntry) -> Bool {
        guard entry.transport == .tcp, let state = entry.tcpState else { return false }
        return (6...8).contains(state)
    }

    public var allErrors: [SystemCallError] {
        stepErrors + sockets.compactMap(\.outcome.error) + conntrack.compactMap(\.outcome.error)
    }
}

/// One kind of netlink trouble: the request (`SOCK_DESTROY`, `IPCTNL_MSG_CT_GET`, ...) and what went
/// wrong with it.
public struct NetlinkTrouble: Hashable, Sendable, CustomStringConvertible {
    public var operation: NetlinkOperation
    public var condition: NetlinkCondition

    public init(_ operation: NetlinkOperation, _ condition: NetlinkCondition) {
        self.operation = operation
        self.condition = condition
    }

    public var description: String { "\(operation.rawValue) \(condition.kernelName)" }
}

/// What went wrong with a netlink request that the purge rode out. Two of them are the same
/// ENOBUFS to the kernel; which one it was decides what was done about it, so each is its own case.
public enum NetlinkCondition: Hashable, Sendable {
    /// A dump's replies overflowed the receive queue (ENOBUFS): the dump was begun again.
    case dumpOverrun
    /// Acks lost to a full receive queue (ENOBUFS): the table was looked at again and the request redone.
    case acksLost
    /// A dump the kernel flagged torn (NLM_F_DUMP_INTR): the table changed under it, so it was redone.
    case dumpInterrupted

    /// How the kernel names it: the `errno` label of conn_reaper_netlink_errors_total and log lines.
    public var kernelName: String {
        switch self {
        case .dumpOverrun, .acksLost: Errno.noBufferSpace.symbolicName
        case .dumpInterrupted: "NLM_F_DUMP_INTR"
        }
    }
}

extension PurgeReport {
    mutating func note(dumpRestarts restarts: Int, redone: Int, operation: NetlinkOperation) {
        note(restarts, NetlinkTrouble(operation, .dumpOverrun))
        note(redone, NetlinkTrouble(operation, .dumpInterrupted))
    }

    mutating func note(_ count: Int, _ trouble: NetlinkTrouble) {
        if count > 0 { troubles[trouble, default: 0] += count }
    }
}

extension PurgeReport.Outcome {
    public var error: SystemCallError? {
        if case .failed(let error) = self { return error }
        return nil
    }
}
