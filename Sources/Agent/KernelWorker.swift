import NIOPosix
import NetworkAddress
import Reaper

/// Owns the netlink sockets of one network namespace on one dedicated OS thread: netlink calls
/// block for milliseconds and must not stall the cooperative pool, and (for other namespaces) the
/// thread that opens the sockets is the one that entered the namespace.
public final class KernelWorker: @unchecked Sendable {
    // Touched only from the pool's single thread: that is what makes the unchecked Sendable sound.
    private var purger: Purger?
    private let thread = NIOThreadPool(numberOfThreads: 1)

    public init() {
        thread.start()
    }

    public func purge(_ matcher: DestinationMatcher, options: Purger.Options) async throws -> PurgeReport {
        try await thread.runIfActive { [self] in
            if purger == nil { purger = Purger(sockets: true, conntrack: true) }
            return purger!.purge(matcher, options: options)
        }
    }

    public func shutdown() async {
        try? await thread.shutdownGracefully()
    }
}
