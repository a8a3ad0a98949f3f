import Logging
import OS
import ServiceLifecycle
import Synchronization

/// The agent's side of `Type=notify`: READY=1 once the endpoints are bound (the configuration was
/// loaded before any service started), RELOADING=1 and READY=1 around each reload, STOPPING=1 as
/// the graceful shutdown begins, and WATCHDOG=1 at half the interval systemd asks for, sent only
/// after a job made a round trip through the kernel worker's thread: the loop that would wedge.
public final class ServiceManagerLink: Sendable {
    let notifier: ServiceManagerNotifier?
    let logger: Logger
    /// Once STOPPING=1 went out, a late reload (a file watcher not stopped yet) must not say READY=1.
    private let stopped = Atomic<Bool>(false)
    /// Ends once READY=1 went out: the watchdog starts then, as systemd's does.
    let readiness: AsyncStream<Void>
    private let readinessContinuation: AsyncStream<Void>.Continuation

    public init(notifier: ServiceManagerNotifier?, logger: Logger) {
        self.notifier = notifier
        self.logger = logger
        (readiness, readinessContinuation) = AsyncStream.makeStream(of: Void.self)
    }

    public func ready(status: String) {
        guard !stopped.load(ordering: .acquiring) else { return }
        send(["READY=1", "STATUS=\(status)"])
        readinessContinuation.finish()
    }

    public func reloading() {
        guard !stopped.load(ordering: .acquiring) else { return }
        send(["RELOADING=1", "MONOTONIC_USEC=\(ServiceManagerNotifier.monotonicMicroseconds())", "STATUS=reloading"])
    }

    public func stopping() {
        stopped.store(true, ordering: .releasing)
        send(["STOPPING=1", "STATUS=stopping"])
    }

    public var isStopping: Bool { stopped.load(ordering: .acquiring) }

    func watchdog() { send(["WATCHDOG=1"]) }

    private func send(_ assignments: [String]) {
        guard let notifier else { return }
        do { try notifier.notify(assignments) } catch {
            logger.warning("service manager notification failed", metadata: ["socket": "\(notifier.socketPath)", "error": "\(error)"])
        }
    }
}

/// Sends the watchdog pings while the agent runs and STOPPING=1 when it begins to stop. Listed last,
/// it is the first service the graceful shutdown reaches.
public struct ServiceManagerService: Service {
    let link: ServiceManagerLink
    let watchdogInterval: Duration?
    /// Returns once a job went through the loop the watchdog stands for.
    let roundTrip: @Sendable () async -> Void

    public init(link: ServiceManagerLink, watchdogInterval: Duration?, roundTrip: @escaping @Sendable () async -> Void) {
        self.link = link
        self.watchdogInterval = watchdogInterval
        self.roundTrip = roundTrip
    }

    public func run() async throws {
        if let watchdogInterval, link.notifier != nil {
            await cancelWhenGracefulShutdown {
                for await _ in link.readiness {}
                while !Task.isCancelled {
                    await roundTrip()
                    guard !Task.isCancelled else { break }
                    link.watchdog()
                    try? await Task.sleep(for: watchdogInterval / 2)
                }
            }
        } else {
            try? await gracefulShutdown()
        }
        link.stopping()
    }
}
