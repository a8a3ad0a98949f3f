import Foundation
import Glibc
import Logging
import ServiceLifecycle
import ServiceLifecycleTestKit
import Testing

@testable import Agent

/// The composed agent as a ServiceGroup: a graceful shutdown stops every service soon, and a
/// changed configuration file is taken without a restart. No root: backends are loopback
/// listeners, and nothing is ever dead, so no kernel worker opens a netlink socket.
@Suite(.serialized) struct AgentLifecycleTests {
    /// A listening TCP socket on 127.0.0.1 and its port, for the probes to find up.
    static func listener() throws -> (fd: Int32, port: UInt16) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard bound, listen(fd, 64) == 0 else { throw POSIXError(.EADDRINUSE) }
        return (fd, UInt16(bigEndian: address.sin_port))
    }

    static func yaml(_ ports: [UInt16], statusPort: UInt16) -> String {
        """
        listen: 127.0.0.1:\(statusPort)
        pools:
          - name: local
            backends: [\(ports.map { "\"127.0.0.1:\($0)\"" }.joined(separator: ", "))]
            probe: { type: tcp, interval: 100ms, timeout: 50ms, rise: 1, fall: 2 }
        """
    }

    static func waitFor(_ what: String, within seconds: Int = 5, _ condition: () -> Bool) async throws {
        for _ in 0..<(seconds * 100) where !condition() { try await Task.sleep(for: .milliseconds(10)) }
        #expect(condition(), "\(what) did not happen within \(seconds) s")
    }

    func withAgent(
        _ body: (AgentApplication, URL, [UInt16], UInt16, GracefulShutdownTestTrigger) async throws -> Void
    ) async throws {
        let first = try Self.listener(), second = try Self.listener()
        defer { close(first.fd); close(second.fd) }
        // A port the kernel just handed out and took back: free, unlike a fixed one another test run may hold.
        let spare = try Self.listener()
        close(spare.fd)
        let status = spare.port
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("conn-reaper-lifecycle-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let file = directory.appendingPathComponent("agent.yaml")
        try Self.yaml([first.port], statusPort: status).write(to: file, atomically: true, encoding: .utf8)
        let source = ConfigSource(origin: .yaml(path: file.path))
        let application = AgentApplication(
            source: source, configuration: try source.load(), logger: Logger(label: "lifecycle-test"), reloadPoll: .milliseconds(50))
        try await testGracefulShutdown { trigger in
            let services = application.services().map { ServiceGroupConfiguration.ServiceConfiguration(service: $0) }
            let group = ServiceGroup(configuration: .init(services: services, logger: application.logger))
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { try await group.run() }
                try await Self.waitFor("the first probe round") { application.state.ready() }
                try await body(application, file, [first.port, second.port], status, trigger)
                try await tasks.next()
            }
        }
    }

    @Test func aGracefulShutdownStopsEveryServiceWithinASecond() async throws {
        var asked: ContinuousClock.Instant?
        try await withAgent { application, _, _, _, trigger in
            #expect(application.state.status().pools.first?.backends.first?.state == .up)
            asked = .now
            trigger.triggerGracefulShutdown()
        }
        // `withAgent` returns once the group's run() has: every service stopped.
        let took = ContinuousClock.now - (asked ?? .now)
        #expect(took < .seconds(1), "stopping took \(took)")
    }

    @Test func aChangedFileIsTakenWithoutARestart() async throws {
        try await withAgent { application, file, ports, status, trigger in
            try Self.yaml(ports, statusPort: status).write(to: file, atomically: true, encoding: .utf8)
            try await Self.waitFor("the reload") { application.state.configuration.pools.first?.backends.count == 2 }
            try await Self.waitFor("the new backend probed up") {
                application.state.status().pools.first?.backends.allSatisfy { $0.state == .up } == true
            }
            #expect(application.metrics.exposition().contains(#"conn_reaper_config_reloads_total{result="success"} 1"#))
            trigger.triggerGracefulShutdown()
        }
    }

    /// A reload ends the old generation's probe loops: a backend dropped from the file is probed no more.
    @Test func aReloadStopsTheProbesOfTheGenerationBefore() async throws {
        try await withAgent { application, file, ports, status, trigger in
            func probes(of port: UInt16) -> Int {
                let prefix = #"conn_reaper_probes_total{pool="local",backend="127.0.0.1:\#(port)",result="success"} "#
                return application.metrics.exposition().split(separator: "\n")
                    .first { $0.hasPrefix(prefix) }.flatMap { Int($0.dropFirst(prefix.count)) } ?? 0
            }
            try Self.yaml([ports[1]], statusPort: status).write(to: file, atomically: true, encoding: .utf8)
            try await Self.waitFor("the new backend probed") { probes(of: ports[1]) > 0 }
            let before = probes(of: ports[0])
            try await Task.sleep(for: .milliseconds(500))  // five of the old interval
            let after = probes(of: ports[0])
            #expect(before > 0 && after == before, "the dropped backend was probed \(after - before) more times")
            trigger.triggerGracefulShutdown()
        }
    }
}
