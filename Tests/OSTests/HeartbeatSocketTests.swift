import OS
import Testing

/// The heartbeat's connect on loopback: the options the kernel holds are the ones asked for, and a
/// refused connect reports ECONNREFUSED through SO_ERROR or at once.
@Suite struct HeartbeatSocketTests {
    @Test func theKernelHoldsTheKeepaliveOptionsAsked() throws {
        let listener = try LoopbackConnection()
        let asked = HeartbeatOptions(idleSeconds: 1, intervalSeconds: 2, count: 1, userTimeoutMilliseconds: 1500)
        let descriptor = try HeartbeatSocket.connect(to: listener.serverEndpoint, options: asked)
        defer { HeartbeatSocket.close(descriptor) }
        #expect(try waitWritable(descriptor))
        #expect(TCPSocket.pendingError(descriptor) == nil)
        let (keepalive, held) = try HeartbeatSocket.options(of: descriptor)
        #expect(keepalive)
        #expect(held == asked)
        // Connected, nothing sent by the peer: nothing to read, not a close.
        #expect(HeartbeatSocket.drain(descriptor) == .nothing)
    }

    @Test func aZeroIdleIsRefusedByTheKernelWithTheOptionsName() throws {
        let endpoint = try LoopbackConnection().serverEndpoint
        #expect(throws: SystemCallError.self) {
            try HeartbeatSocket.connect(to: endpoint, options: HeartbeatOptions(idleSeconds: 0))
        }
        do {
            _ = try HeartbeatSocket.connect(to: endpoint, options: HeartbeatOptions(idleSeconds: 0))
        } catch {
            #expect(error.call == "setsockopt(TCP_KEEPIDLE)")
            #expect(error.errno.rawValue == 22)
        }
    }

    @Test func aConnectNobodyAcceptsIsRefused() throws {
        // A port that was just listening and is closed now.
        let endpoint = try LoopbackConnection().serverEndpoint
        let code: Int32?
        do throws(SystemCallError) {
            let descriptor = try HeartbeatSocket.connect(to: endpoint, options: HeartbeatOptions())
            defer { HeartbeatSocket.close(descriptor) }
            #expect(try waitWritable(descriptor))
            code = TCPSocket.pendingError(descriptor)?.errno.rawValue
        } catch {
            code = error.errno.rawValue
        }
        #expect(code == 111)
    }

    private func waitWritable(_ descriptor: Int32) throws(SystemCallError) -> Bool {
        let wakeup = try PollerWakeup()
        defer { wakeup.close() }
        let poller = try EventPoller(wakeup: wakeup)
        try poller.watchWritable(descriptor, token: 1)
        var ready = false
        try poller.wait(milliseconds: 2000) { ready = ready || $0 == 1 }
        return ready
    }
}
