import NetworkAddress
import Reaper
import ServiceLifecycle
import OS
import Synchronization

/// Owns the netlink sockets of one network namespace on one dedicated OS thread (a NamespaceThread):
/// netlink calls block for milliseconds and must not stall the cooperative pool, and (for other
/// namespaces) the thread that opens the sockets is the one that entered the namespace.
public final class KernelWorker: Sendable {
    /// Made by the first job and used by each after it, all on the worker's one thread: the lock is
    /// never contended, it only lets the non-Sendable purger live in a Sendable worker.
    private let purger = Mutex<Purger?>(nil)
    /// Makes the purger on the worker's thread, at its first job: the real one opens that thread's netlink sockets.
    private let makePurger: @Sendable () -> Purger
    private let thread: NamespaceThread?
    private let threadError: SystemCallError?
    /// The namespace file this worker's thread enters before anything else; nil: the agent's own.
    public let namespace: String?

    public convenience init(namespace: String? = nil) {
        self.init(namespace: namespace, entering: namespace) { Purger(sockets: true, conntrack: true) }
    }

    /// `entering`: the namespace file the thread enters, nil to stay in the agent's own. Other than
    /// `namespace` only in unit tests, whose workers act on a fake kernel named after a namespace.
    init(namespace: String?, entering: String?, makePurger: @escaping @Sendable () -> Purger) {
        self.namespace = namespace
        self.makePurger = makePurger
        do {
            thread = try NamespaceThread(entering: entering)
            threadError = nil
        } catch {
            thread = nil
            threadError = error
        }
    }

    /// Runs `body` with this namespace's purger on the worker's thread.
    public func perform<Result: Sendable>(_ body: @escaping @Sendable (Purger) -> Result) async throws -> Result {
        guard let thread else { throw threadError ?? NamespaceThread.stoppedError }
        return try await thread.run { [self] in
            self.purger.withLock { purger in
                let current = purger ?? makePurger()
                purger = current
                return body(current)
            }
        }
    }

    /// Returns once an empty job went through the worker's thread: that the thread is not stuck in
    /// a kernel call (the systemd watchdog asks).
    public func roundTrip() async {
        _ = try? await thread?.run {}
    }

    /// Ends the thread once the jobs already queued have run; returns at once.
    public func shutdown() {
        thread?.stop()
    }
}

/// One KernelWorker per network namespace the pools work in: the agent's own, each listed file,
/// and with `all` every namespace on the node, re-enumerated every 10 s (and when a backend goes
/// down, so a namespace made since is found at once). A worker whose namespace vanished is dropped:
/// its netlink sockets would otherwise keep the namespace alive.
public actor KernelWorkers: Service {
    public let own: KernelWorker
    /// Makes the worker of a namespace file (nil: the agent's own namespace).
    private let makeWorker: @Sendable (_ namespace: String?) -> KernelWorker
    private var workers: [NetworkNamespace.Identity: KernelWorker] = [:]
    private var lastUsed: [NetworkNamespace.Identity: ContinuousClock.Instant] = [:]
    /// A worker no pool asked for this long is dropped (its file was removed, or a reload moved on).
    static let idleLimit: Duration = .seconds(60)
    private var enumerated: [(path: String, identity: NetworkNamespace.Identity)] = []
    private var enumeratedAt: ContinuousClock.Instant?
    static let refreshEvery: Duration = .seconds(10)
    private var lookout: NamespaceThread?

    public init() {
        self.init { KernelWorker(namespace: $0) }
    }

    /// Workers made by `makeWorker`: in unit tests, workers whose purgers act on a fake kernel.
    init(makeWorker: @escaping @Sendable (_ namespace: String?) -> KernelWorker) {
        self.makeWorker = makeWorker
        own = makeWorker(nil)
    }

    /// The workers for a pool's namespaces, each with the label its audit lines carry (nil: own).
    public func workers(for selection: NamespaceSelection?, refresh: Bool = false) async -> [(namespace: String?, worker: KernelWorker)] {
        let now = ContinuousClock.now
        for (identity, used) in lastUsed where now - used > Self.idleLimit {
            workers.removeValue(forKey: identity)?.shutdown()
            lastUsed[identity] = nil
        }
        switch selection {
        case nil:
            return [(nil, own)]
        case .paths(let paths):
            let identities = await lookUp { paths.map(NetworkNamespace.identity(of:)) }
            return zip(paths, identities).compactMap { path, identity in
                // A file that no longer names a namespace is skipped until it does again.
                guard let identity else { return nil }
                return (path, worker(for: identity, path: path))
            }
        case .all:
            if refresh || enumeratedAt.map({ now - $0 >= Self.refreshEvery }) ?? true {
                enumerated = await lookUp(NetworkNamespace.all)
                enumeratedAt = now
                let alive = Set(enumerated.map(\.identity))
                for (identity, worker) in workers where !alive.contains(identity) {
                    workers[identity] = nil
                    lastUsed[identity] = nil
                    worker.shutdown()
                }
            }
            return enumerated.map { ($0.path, worker(for: $0.identity, path: $0.path)) }
        }
    }

    /// Runs a look at the node's namespaces (a walk of every /proc/PID, stats of nsfs files) on a
    /// thread of its own, made on first need: file system calls that can block must not hold a
    /// thread of the cooperative pool. Not a worker's thread: it would wait behind that worker's purges.
    private func lookUp<Found: Sendable>(_ look: @escaping @Sendable () -> Found) async -> Found {
        if lookout == nil { lookout = try? NamespaceThread(entering: nil) }
        // No thread (or stopped): the look runs here, as it did before.
        guard let lookout else { return look() }
        return await lookout.runOrInPlace(look)
    }

    /// Drops the worker of a namespace that could not be entered (it vanished meanwhile).
    public func drop(_ worker: KernelWorker) {
        guard let identity = workers.first(where: { $0.value === worker })?.key else { return }
        workers[identity] = nil
        lastUsed[identity] = nil
        worker.shutdown()
    }

    private func worker(for identity: NetworkNamespace.Identity, path: String) -> KernelWorker {
        lastUsed[identity] = .now
        if let existing = workers[identity] { return existing }
        let created = makeWorker(path)
        workers[identity] = created
        return created
    }

    /// A Service so the ServiceGroup ends the workers' threads too: listed first, it stops last,
    /// once nothing can ask a worker for anything any more.
    public func run() async throws {
        try? await gracefulShutdown()
        shutdown()
    }

    public func shutdown() {
        own.shutdown()
        lookout?.stop()  // kept, stopped: a late look runs in place, and starts no thread
        for worker in workers.values { worker.shutdown() }
        workers = [:]
    }
}
