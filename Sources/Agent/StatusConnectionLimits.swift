import NIOPosix

/// What keeps the status endpoint from costing the probes and reaps anything under abuse (a thousand
/// scrapers, slowloris clients): its own event loop thread, so its sockets never queue behind a probe's
/// or in front of one; a cap on connections served at once (the rest wait in the listen backlog), so
/// its handlers cannot fill the task pool the reap pipeline runs on; and an idle limit that counts only
/// whole HTTP parts (Hummingbird's), so a client sending its request head a byte at a time is cut off
/// after it, not kept forever.
enum StatusConnectionLimits {
    static let maximumConnections = 256
    /// A scrape sends its whole request at once; three seconds is plenty even over a slow link.
    static let requestDeadline: Duration = .seconds(3)
    static let eventLoops = MultiThreadedEventLoopGroup(numberOfThreads: 1)
}
