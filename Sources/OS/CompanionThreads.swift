import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// The NamespaceThreads one thread hands its side work to (BackgroundWork): started on first need,
/// one for each job it has running at once, then kept, and stopped when that thread ends. A worker
/// that needs two kernel calls at once so has two persistent threads, not a new one per call.
///
/// A companion is made by its owner, so it starts in its owner's network namespace (a new thread
/// shares its creator's), and it never enters another. An owner does not move either: a thread
/// enters a namespace only as a NamespaceThread starts, before its first job (and so before it
/// could have companions).
///
/// A thread of the cooperative pool never ends, so its companions last as long as the process: the
/// agent starts background work only on its NamespaceThreads (tests start some on the pool).
final class CompanionThreads: Sendable {
    private struct Pool {
        var idle: [NamespaceThread] = []
        var ownerEnded = false
    }

    private let pool: Mutex<Pool>

    /// The calling thread's, made on its first call. Without thread-specific storage, one that keeps
    /// none: a companion per job, as before.
    static var ofCallingThread: CompanionThreads {
        guard let key = storageKey else { return CompanionThreads(ownerEnded: true) }
        if let stored = pthread_getspecific(key) {
            return Unmanaged<CompanionThreads>.fromOpaque(stored).takeUnretainedValue()
        }
        let made = Unmanaged.passRetained(CompanionThreads(ownerEnded: false))
        guard pthread_setspecific(key, made.toOpaque()) == 0 else {
            made.release()
            return CompanionThreads(ownerEnded: true)
        }
        return made.takeUnretainedValue()
    }

    private init(ownerEnded: Bool) {
        pool = Mutex(Pool(ownerEnded: ownerEnded))
    }

    /// An idle companion, or a new one: called on the owner's thread (where a new one must start).
    func borrow() throws(SystemCallError) -> NamespaceThread {
        if let idle = pool.withLock({ $0.idle.popLast() }) { return idle }
        return try NamespaceThread(entering: nil)
    }

    /// Called by the companion as its job ends, before the job's result is handed over: an owner
    /// that starts its next job at once then finds it idle instead of starting another.
    func giveBack(_ companion: NamespaceThread) {
        let kept = pool.withLock { pool in
            guard !pool.ownerEnded else { return false }
            pool.idle.append(companion)
            return true
        }
        if !kept { companion.stop() }
    }

    /// The owner ended: idle companions stop now, busy ones as they give themselves back.
    private func ownerThreadEnded() {
        let idle = pool.withLock { pool in
            pool.ownerEnded = true
            defer { pool.idle = [] }
            return pool.idle
        }
        for companion in idle { companion.stop() }
    }

    /// Thread-specific storage whose destructor runs as each owner thread exits (never for the main
    /// thread: the process ends with it). Nil if the process ran out of keys (EAGAIN).
    private static let storageKey: pthread_key_t? = {
        var key = pthread_key_t()
        let created = pthread_key_create(&key) { stored in
            guard let stored else { return }
            Unmanaged<CompanionThreads>.fromOpaque(stored).takeRetainedValue().ownerThreadEnded()
        }
        return created == 0 ? key : nil
    }()
}
