import Conntrack
import NetworkAddress
import OS
import Synchronization

/// Conntrack's new-flow announcements in one network namespace, read on a NamespaceThread of their
/// own while at least one dead backend is watched there. The subscription costs nothing while no
/// flow is made; each new flow of the namespace costs one parse and a look at the watched set.
final class NewFlowWatch: Sendable {
    struct Watched: Sendable {
        var backend: Endpoint
        var transports: Set<TransportProtocol>
        var zones: ConntrackZones
        var announce: @Sendable (AnnouncedFlow) -> Void
        /// Announcements went missing: `true` when the read failed and none will come from here.
        var lost: @Sendable (_ stopped: Bool) -> Void
    }

    let namespace: String?
    private let thread: NamespaceThread
    private let watched = Mutex<[BackendKey: Watched]>([:])
    private let stopped = Atomic<Bool>(false)
    private let readFailed = Atomic<Bool>(false)

    /// Its read failed: it announces nothing more, and a new watch must subscribe again.
    var failed: Bool { readFailed.load(ordering: .relaxed) }

    /// How long one read waits: the latency of noticing `stop`.
    static let readWait: Int32 = 200

    /// Subscribes and reads on a thread that `worker`'s thread starts, and so in its namespace (a
    /// thread shares its creator's): the subscription never leaves that thread. Nil: no thread or
    /// no subscription there.
    static func start(namespace: String?, on worker: KernelWorker) async -> NewFlowWatch? {
        let started = try? await worker.perform { _ in
            Result { () throws(SystemCallError) in try NamespaceThread(entering: nil) }
        }
        guard let thread = try? started?.get() else { return nil }
        let watch = NewFlowWatch(namespace: namespace, thread: thread)
        let subscribed = await withCheckedContinuation { (subscribed: CheckedContinuation<Bool, Never>) in
            let taken = thread.start {
                guard let flows = try? ConntrackNewFlows() else { return subscribed.resume(returning: false) }
                subscribed.resume(returning: true)
                watch.read(flows)
            }
            if !taken { subscribed.resume(returning: false) }
        }
        guard subscribed else {
            thread.stop()
            return nil
        }
        return watch
    }

    private init(namespace: String?, thread: NamespaceThread) {
        self.namespace = namespace
        self.thread = thread
    }

    var isEmpty: Bool { watched.withLock { $0.isEmpty } }

    func watch(_ key: BackendKey, _ what: Watched) { watched.withLock { $0[key] = what } }

    /// Drops a backend; the thread ends once none is left.
    func unwatch(_ key: BackendKey) {
        let empty = watched.withLock {
            $0[key] = nil; return $0.isEmpty
        }
        if empty { stop() }
    }

    /// Ends the read within `readWait`, and then its thread.
    func stop() {
        stopped.store(true, ordering: .relaxed)
        thread.stop()
    }

    private func read(_ flows: ConntrackNewFlows) {
        // A failed read ends the thread too: the watch is replaced, not read again.
        defer { thread.stop() }
        while !stopped.load(ordering: .relaxed) {
            // The watched set is read per flow, not once per wait: a backend watched meanwhile counts at once.
            let read = Result { () throws(SystemCallError) in
                try flows.next(
                    waitingUpTo: Self.readWait,
                    wanted: { entry in
                        self.watched.withLock { $0.values.contains { Self.matches(entry, $0) } }
                    })
            }
            let current = watched.withLock { Array($0.values) }
            guard case .success(let batch) = read else {
                // Never silently: every watcher hears that its announcements stopped, and walks.
                readFailed.store(true, ordering: .relaxed)
                for watched in current { watched.lost(true) }
                return
            }
            for entry in batch.entries {
                for watched in current where Self.matches(entry, watched) {
                    watched.announce(AnnouncedFlow(entry: entry, namespace: namespace))
                }
            }
            if batch.overrun { for watched in current { watched.lost(false) } }
        }
    }

    /// Served by the backend: NAT'd to it (a Service VIP's flow names it as reply source), or sent to
    /// it and answered from its address (dialled to it but a DNAT's to a live one is that one's), in
    /// a zone the pool takes.
    static func matches(_ entry: ConntrackEntry, _ watched: Watched) -> Bool {
        watched.transports.contains(entry.transport) && watched.zones.contains(entry.zone)
            && (entry.reply.source == watched.backend
                || (entry.original.destination == watched.backend && entry.reply.source.address == watched.backend.address))
    }
}
