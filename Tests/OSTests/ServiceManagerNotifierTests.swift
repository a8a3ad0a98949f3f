import Foundation
import Glibc
import OS
import Testing

/// sd_notify's datagrams, received on a real AF_UNIX datagram socket: at a path, and in the
/// abstract namespace systemd also uses ("@name" in NOTIFY_SOCKET).
@Suite struct ServiceManagerNotifierTests {
    /// A datagram socket bound to `address` (a path, or "@name"), and what it receives.
    final class Receiver {
        let descriptor: Int32

        init(_ address: String) throws {
            descriptor = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
            var socketAddress = sockaddr_un()
            socketAddress.sun_family = sa_family_t(AF_UNIX)
            var path = Array(address.utf8)
            if path.first == UInt8(ascii: "@") { path[0] = 0 }
            withUnsafeMutableBytes(of: &socketAddress.sun_path) { $0.copyBytes(from: path) }
            let length = socklen_t(MemoryLayout.offset(of: \sockaddr_un.sun_path)! + path.count)
            let bound = withUnsafePointer(to: &socketAddress) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, length) }
            }
            guard bound == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EINVAL) }
        }

        deinit { close(descriptor) }

        func receive() -> String {
            var buffer = [UInt8](repeating: 0, count: 4096)
            let count = recv(descriptor, &buffer, buffer.count, 0)
            return String(decoding: buffer.prefix(max(0, count)), as: UTF8.self)
        }
    }

    @Test func aPathSocketGetsOneDatagramPerNotification() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("notify-\(UUID())").path
        defer { unlink(path) }
        let receiver = try Receiver(path)
        let notifier = try ServiceManagerNotifier(socketPath: path)
        try notifier.notify(["READY=1", "STATUS=watching 3 backends"])
        try notifier.notify(["WATCHDOG=1"])
        #expect(receiver.receive() == "READY=1\nSTATUS=watching 3 backends")
        #expect(receiver.receive() == "WATCHDOG=1")
    }

    @Test func anAbstractSocketIsWrittenWithALeadingAt() throws {
        let name = "@conn-reaper-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let receiver = try Receiver(name)
        try ServiceManagerNotifier(socketPath: name).notify(["STOPPING=1"])
        #expect(receiver.receive() == "STOPPING=1")
    }

    @Test func aSocketNobodyListensOnIsAnErrorWithTheCallsName() throws {
        let notifier = try ServiceManagerNotifier(socketPath: "/nonexistent/notify")
        #expect(throws: SystemCallError.self) { try notifier.notify(["READY=1"]) }
        #expect(throws: SystemCallError.self) { _ = try ServiceManagerNotifier(socketPath: "relative/path") }
    }

    @Test func reloadingCarriesTheMonotonicClock() {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let expected = UInt64(now.tv_sec) * 1_000_000 + UInt64(now.tv_nsec) / 1000
        let reported = ServiceManagerNotifier.monotonicMicroseconds()
        #expect(reported >= expected && reported - expected < 1_000_000)
    }
}
