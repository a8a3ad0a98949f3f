import Conntrack
import Netlink
import NetworkAddress
import OS
import Reaper
import SockDiag
import Synchronization

/// An in-memory socket table that does what sock_diag does with a purge's requests: dumps filter
/// by the query, a destroy removes the socket its cookie names (ENOENT when there is none). It can
/// lose an ack, refuse a destroy and tear a dump, and it records what it was asked.
/// Its state is behind a lock: the purge's conntrack prefetch runs on another thread.
final class FakeSocketTable: SocketTable, Sendable {
    struct State {
        var sockets: [DiagnosedSocket]
        var ownInodes: Set<UInt32> = []
        var listening: [Endpoint] = []
        /// Destroys the kernel carries out but whose ack is lost, by cookie: how many more times.
        var acksLostAfterDestroying: [UInt64: Int] = [:]
        /// Destroys whose ack is lost before the kernel did anything, by cookie: how many more times.
        var acksLostBeforeDestroying: [UInt64: Int] = [:]
        /// Destroys the kernel refuses with this answer, every time.
        var refusals: [UInt64: Acknowledgement] = [:]
        /// The next dump is torn: flagged interrupted, and the last socket it would list is missing.
        var tearingNextDump = false
        /// The dump of this number (1: the first) is torn the same way.
        var tearingDump: Int?
        /// Sockets that close on their own right after the dump of this number (1: the first).
        var closingAfterDump: [Int: Set<UInt64>] = [:]

        /// The cookies each destroy request named, in order.
        var destroyRequests: [UInt64] = []
        var dumps = 0
        /// Exact 4-tuple lookups (hash lookups, not walks).
        var lookups = 0
    }

    let state: Mutex<State>

    init(_ sockets: [DiagnosedSocket], own: Set<UInt32> = []) {
        state = Mutex(State(sockets: sockets, ownInodes: own))
    }

    func change(_ body: (inout State) -> Void) { state.withLock { body(&$0) } }
    var sockets: [DiagnosedSocket] { state.withLock { $0.sockets } }
    var cookies: Set<UInt64> { Set(sockets.map(\.id.cookie)) }
    var destroyRequests: [UInt64] { state.withLock { $0.destroyRequests } }
    var dumps: Int { state.withLock { $0.dumps } }
    var lookups: Int { state.withLock { $0.lookups } }

    func sockets(matching query: SocketQuery, signal: SocketDiagnostics.CountSignal?) throws(SystemCallError) -> SocketDiagnostics.Dump {
        let dump = state.withLock { state -> SocketDiagnostics.Dump in
            state.dumps += 1
            var listed = state.sockets.filter { socket in
                query.transports.contains(socket.transport) && query.states.contains(socket.state)
                    && query.destinations.contains { $0.matches(address: socket.remote.address, port: socket.remote.port) }
            }
            let tearing = (state.tearingNextDump || state.tearingDump == state.dumps) && !listed.isEmpty
            if tearing {
                state.tearingNextDump = false
                listed.removeLast()
            }
            if let closing = state.closingAfterDump[state.dumps] { state.sockets.removeAll { closing.contains($0.id.cookie) } }
            return SocketDiagnostics.Dump(sockets: listed, interrupted: tearing)
        }
        if let signal, dump.sockets.count >= signal.count { signal.reached() }
        return dump
    }

    func socket(
        exactly id: SocketID, family: SocketFamily, transport: TransportProtocol, includeTCPInfo: Bool
    ) throws(SystemCallError) -> DiagnosedSocket? {
        state.withLock { state in
            state.lookups += 1
            return state.sockets.first {
                $0.family == family && $0.transport == transport && $0.local == id.source && $0.remote == id.destination
            }
        }
    }

    func listeningEndpoints() throws(SystemCallError) -> [Endpoint] { state.withLock { $0.listening } }

    func destroy(_ sockets: [DiagnosedSocket]) throws(SystemCallError) -> [Acknowledgement] {
        state.withLock { state in
            sockets.map { socket in
                let cookie = socket.id.cookie
                state.destroyRequests.append(cookie)
                if let refusal = state.refusals[cookie] { return refusal }
                if Self.spend(&state.acksLostBeforeDestroying, cookie) { return .unconfirmed }
                guard let index = state.sockets.firstIndex(where: { $0.id == socket.id }) else { return .failed(.noSuchFileOrDirectory) }
                state.sockets.remove(at: index)
                return Self.spend(&state.acksLostAfterDestroying, cookie) ? .unconfirmed : .done
            }
        }
    }

    func ownSocketInodes() -> Set<UInt32> { state.withLock { $0.ownInodes } }

    /// Takes one from `key`'s count; true when there was one to take.
    static func spend<Key: Hashable>(_ counts: inout [Key: Int], _ key: Key) -> Bool {
        guard let left = counts[key], left > 0 else { return false }
        counts[key] = left - 1
        return true
    }
}

/// An in-memory conntrack table that does what ctnetlink does with a purge's requests: dumps list
/// the entries whose original destination or reply source is a destination (the original side
/// only those a DNAT sent elsewhere, the reply side the direct ones only if asked), a delete removes
/// the entry its tuple and zone name, a flush every entry its filter names. It can lose an ack,
/// refuse the flush, tear a dump, and keep listing what it deleted (entries still dying), and it
/// records what it was asked. Whether the flush is supported is its own, never the process's.
final class FakeFlowTable: FlowTable, Sendable {
    struct State {
        var entries: [ConntrackEntry]
        /// What the canary trial would find, asked once.
        var canaryTrusts = true
        var flushSupported: Bool?
        /// The kernel's answer to every flush: a refusal deletes nothing and is remembered.
        var flushAnswer: Acknowledgement = .done
        /// Deletes whose ack is lost before the kernel did anything, by identity: how many more times.
        var acksLostBeforeDeleting: [ConntrackEntry.Identity: Int] = [:]
        /// Deletes the kernel carries out but whose ack is lost, by identity: how many more times.
        var acksLostAfterDeleting: [ConntrackEntry.Identity: Int] = [:]
        /// Deleted entries are still listed by later dumps (they are dying), and a delete finds none.
        var deletedStayListed = false
        var dying: [ConntrackEntry] = []
        /// The next dump is torn: flagged interrupted, and the last entry it would list is missing.
        var tearingNextDump = false

        var deleteRequests: [ConntrackEntry.Identity] = []
        var flushRequests: [ConntrackFlushRequest] = []
        var dumps = 0
        var canaryTrials = 0
    }

    let state: Mutex<State>

    init(_ entries: [ConntrackEntry]) {
        state = Mutex(State(entries: entries))
    }

    func change(_ body: (inout State) -> Void) { state.withLock { body(&$0) } }
    var entries: [ConntrackEntry] { state.withLock { $0.entries } }
    var deleteRequests: [ConntrackEntry.Identity] { state.withLock { $0.deleteRequests } }
    var flushRequests: [ConntrackFlushRequest] { state.withLock { $0.flushRequests } }
    var dumps: Int { state.withLock { $0.dumps } }

    func entries(
        for destinations: [Destination], transports: Set<TransportProtocol>, sideBySide: Bool,
        directFlows: @escaping @Sendable () -> Bool, dialledSide: (ConntrackTable.Dump) -> Void
    ) throws(SystemCallError) -> ConntrackTable.Dump {
        let listed = state.withLock { state in
            state.dumps += 1
            return (state.entries + state.dying).filter { transports.contains($0.transport) }
        }
        func named(_ endpoint: Endpoint) -> Bool { destinations.contains { $0.matches(address: endpoint.address, port: endpoint.port) } }
        func isDirect(_ entry: ConntrackEntry) -> Bool { entry.reply.source == entry.original.destination }
        var dump = ConntrackTable.Dump(entries: listed.filter { named($0.original.destination) && !isDirect($0) }, interrupted: false)
        dialledSide(dump)
        let listingDirect = directFlows()
        let replied = listed.filter { named($0.reply.source) && (listingDirect || !isDirect($0)) }
        var seen = Set(dump.entries.map(\.identity))
        dump.entries += replied.filter { seen.insert($0.identity).inserted }
        state.withLock { state in
            guard state.tearingNextDump, !dump.entries.isEmpty else { return }
            state.tearingNextDump = false
            dump.entries.removeLast()
            dump.interrupted = true
        }
        return dump
    }

    func entryCount() throws(SystemCallError) -> Int? { state.withLock { $0.entries.count } }

    func delete(_ entries: [ConntrackEntry]) throws(SystemCallError) -> [Acknowledgement] {
        state.withLock { state in
            entries.map { entry in
                state.deleteRequests.append(entry.identity)
                if FakeSocketTable.spend(&state.acksLostBeforeDeleting, entry.identity) { return .unconfirmed }
                guard let index = state.entries.firstIndex(where: { $0.identity == entry.identity }) else {
                    return .failed(.noSuchFileOrDirectory)
                }
                let deleted = state.entries.remove(at: index)
                if state.deletedStayListed { state.dying.append(deleted) }
                return FakeSocketTable.spend(&state.acksLostAfterDeleting, entry.identity) ? .unconfirmed : .done
            }
        }
    }

    func flush(_ requests: [ConntrackFlushRequest]) throws(SystemCallError) -> [Acknowledgement] {
        state.withLock { state in
            state.flushRequests += requests
            guard state.flushAnswer == .done else {
                if [.failed(.invalidArgument), .failed(.notSupported)].contains(state.flushAnswer) { state.flushSupported = false }
                return requests.map { _ in state.flushAnswer }
            }
            for request in requests { state.entries.removeAll { Self.flush(request, takes: $0) } }
            return requests.map { _ in .done }
        }
    }

    func verifyFlush() -> Bool {
        state.withLock { state in
            if let known = state.flushSupported { return known }
            state.canaryTrials += 1
            state.flushSupported = state.canaryTrusts
            return state.canaryTrusts
        }
    }

    var flushSupported: Bool? { state.withLock { $0.flushSupported } }

    /// Whether the kernel's flush for `request` deletes `entry`: its zone (if named), transport, and
    /// address and port on the filter's side.
    static func flush(_ request: ConntrackFlushRequest, takes entry: ConntrackEntry) -> Bool {
        if let zone = request.zone, zone != entry.zone { return false }
        let (address, port, transport, endpoint) =
            switch request.filter {
            case .originalDestination(let address, let port, let transport): (address, port, transport, entry.original.destination)
            case .replySource(let address, let port, let transport): (address, port, transport, entry.reply.source)
            }
        return transport == entry.transport && address == endpoint.address && (port.map { $0 == endpoint.port } ?? true)
    }
}
