import Conntrack
import Foundation
import NetworkAddress
import OS
import Synchronization

/// Conntrack's new-flow announcements in one network namespace, read on a thread of their own
/// while at least one dead backend is watched there. The subscription costs nothing while no flow
/// is made; each new flow of the namespace costs one parse and a look at the watched set.
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
    private let watched = Mutex<[BackendKey: Watched]>([:])
    private let stopped = Atomic<Bool>(false)
    private let readFailed = Atomic<Bool>(false)

    /// Its read failed: it announces nothing more, and a new watch must subscribe again.
    var failed: Bool { readFailed.load(ordering: .relaxed) }

    /// How long one read waits: the latency of noticing `stop`.
    static let readWait: Int32 = 200

    /// Starts reading `subscription` (made in `namespace`) on a new thread.
    init(namespace: String?, subscription: SubscriptionHandle) {
        self.namespace = namespace
        Thread.detachNewThread { [self] in self.read(subscription.flows) }
    }

    var isEmpty: Bool { watched.withLock { $0.isEmpty } }

    func watch(_ key: BackendKey, _ what: Watched) { watched.withLock { $0[key] = what } }

    /// Drops a backend; the thread ends once none is left.
    func unwatch(_ key: BackendKey) {
        let empty = watched.withLock {
            $0[key] = nil; return $0.isEmpty
        }
        if empty { stopped.store(true, ordering: .relaxed) }
    }

    private func read(_ flows: ConntrackNewFlows) {
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

/// Hands a subscription from the namespace's worker thread, where it is made, to the one thread
/// that reads it. It is never used by two threads: the worker lets go of it once made.
struct SubscriptionHandle: @unchecked Sendable {
    let flows: ConntrackNewFlows
}
