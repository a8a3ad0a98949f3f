import Foundation
import Netlink
import NetworkAddress
import OS
import Reaper
import SockDiag
import Synchronization
import Testing

@testable import Agent

/// The reaping kernel over its workers, each namespace's purger acting on a fake socket table: how
/// a reap shares its limit and stops, and what a pool's stuck scan carries to its next.
@Suite struct WorkerReapKernelTests {
    static let backend = Endpoint(address: IPAddress("10.0.0.3")!, port: 6443)

    /// A socket toward `remote` from a client port of its own, named by `cookie`.
    static func socket(
        _ cookie: UInt64, to remote: Endpoint = backend, transport: TransportProtocol = .tcp, state: SocketState = .established,
        tcpInfo: TCPInfo? = nil, sendQueue: UInt32 = 0, timer: UInt8 = 0
    ) -> DiagnosedSocket {
        DiagnosedSocket(
            family: .inet, transport: transport, state: state,
            id: SocketID(
                source: Endpoint(address: IPAddress("10.0.0.10")!, port: 40000 + UInt16(cookie)), destination: remote, cookie: cookie),
            timer: timer, sendQueue: sendQueue, tcpInfo: tcpInfo)
    }

    /// A kernel whose workers' purgers act on `tables`, by namespace file (nil: the agent's own).
    static func kernel(_ tables: [String?: FakeNamespaceSockets]) -> WorkerReapKernel {
        WorkerReapKernel(
            workers: KernelWorkers { namespace in
                let table = tables[namespace] ?? FakeNamespaceSockets([])
                return KernelWorker(namespace: namespace, entering: nil) { Purger(sockets: table, conntrack: nil) }
            })
    }

    func request(scope: ReapScope, transports: Set<TransportProtocol>, limit: Int, namespaces: [String]) -> KernelReapRequest {
        KernelReapRequest(
            backend: Self.backend, transports: transports, scope: scope, limit: limit, dryRun: false, namespaces: .paths(namespaces))
    }

    // MARK: Reap

    @Test func aReapsLimitIsSharedAcrossItsMatchersAndNamespaces() async throws {
        let files = try NamespaceFiles(2)
        defer { files.remove() }
        let connecting = [Self.socket(1, state: .synSent), Self.socket(2, state: .synSent)]
        let udp = [Self.socket(3, transport: .udp), Self.socket(4, transport: .udp)]
        let first = FakeNamespaceSockets(connecting + udp)
        let second = FakeNamespaceSockets([Self.socket(5, state: .synSent), Self.socket(6, state: .synSent)])
        let kernel = Self.kernel([files.paths[0]: first, files.paths[1]: second])
        let reports = await kernel.reap(
            request(scope: .newConnects, transports: [.tcp, .udp], limit: 3, namespaces: files.paths), while: { true })
        #expect(first.cookies == [4], "the UDP matcher had room for one after the TCP one's two")
        #expect(second.cookies == [5, 6], "nothing left for the second namespace")
        #expect(reports.map(\.namespace) == [files.paths[0]])
        #expect(reports.first?.report?.socketsEnded == 3)

        let roomy = FakeNamespaceSockets(connecting + udp)
        let other = FakeNamespaceSockets([Self.socket(5, state: .synSent), Self.socket(6, state: .synSent)])
        let everything = await Self.kernel([files.paths[0]: roomy, files.paths[1]: other]).reap(
            request(scope: .newConnects, transports: [.tcp, .udp], limit: 10, namespaces: files.paths), while: { true })
        #expect(roomy.cookies.isEmpty && other.cookies.isEmpty)
        #expect(everything.compactMap(\.report?.socketsEnded) == [4, 2])
    }

    @Test func aReapThatMayNoLongerRunStopsBeforeTheNextNamespace() async throws {
        let files = try NamespaceFiles(2)
        defer { files.remove() }
        for stopsAfterFirst in [true, false] {
            let first = FakeNamespaceSockets([Self.socket(1)])
            let second = FakeNamespaceSockets([Self.socket(2)])
            let asked = Mutex(0)
            let reports = await Self.kernel([files.paths[0]: first, files.paths[1]: second]).reap(
                request(scope: .full, transports: [.tcp], limit: 10, namespaces: files.paths)
            ) {
                let count = asked.withLock { count in
                    count += 1
                    return count
                }
                return !stopsAfterFirst || count == 1
            }
            #expect(first.cookies.isEmpty)
            #expect(second.cookies == (stopsAfterFirst ? [2] : []))
            #expect(reports.map(\.namespace) == (stopsAfterFirst ? [files.paths[0]] : files.paths))
        }
    }

    // MARK: Stuck scans

    static let x = Endpoint(address: IPAddress("10.0.0.2")!, port: 443)
    static let y = Endpoint(address: IPAddress("10.0.0.3")!, port: 443)
    static let z = Endpoint(address: IPAddress("10.0.0.9")!, port: 443)

    static func pool(_ name: String, _ backends: [Endpoint]) -> PoolConfiguration {
        var pool = PoolConfiguration(name: name, backends: backends)
        pool.stuckAfter = .seconds(2)
        return pool
    }

    /// In flight unanswered since its last ACK 2.5 s ago, retransmitted once (RTO 200 ms, doubled):
    /// one look shows it has waited 2.5 s, past stuck_after.
    static func waiting(_ cookie: UInt64, toward backend: Endpoint) -> DiagnosedSocket {
        let info = TCPInfo(
            retransmits: 1, backoff: 1, rtoMicroseconds: 400_000, unacked: 1, lastDataSentMilliseconds: 2_300,
            lastAckReceivedMilliseconds: 2_500)
        return socket(cookie, to: backend, tcpInfo: info, sendQueue: 6, timer: StuckRule.retransmitTimer)
    }

    /// Acknowledged a moment ago, nothing waiting.
    static func healthy(_ cookie: UInt64, toward backend: Endpoint) -> DiagnosedSocket {
        socket(cookie, to: backend, tcpInfo: TCPInfo(lastAckReceivedMilliseconds: 30))
    }

    @Test func aStuckScanCarriesItsPoolsJudgementToThatPoolsNextScan() async {
        let api = Self.pool("api", [Self.x, Self.y])
        let web = Self.pool("web", [Self.z])
        let table = FakeNamespaceSockets([
            Self.waiting(1, toward: Self.x), Self.waiting(2, toward: Self.y), Self.healthy(3, toward: Self.z),
        ])
        let kernel = Self.kernel([nil: table])
        // Both of api's backends in trouble at once: a fault on this side, nothing ended, both held.
        let fault = await kernel.scanStuck(api, limit: 10, dryRun: false, namespaces: nil)
        #expect(fault.map(\.localFault) == [true])
        #expect(table.cookies == [1, 2, 3])
        // Another pool's scan in between keeps its own judgement, not api's.
        #expect(await kernel.scanStuck(web, limit: 10, dryRun: false, namespaces: nil).isEmpty)
        // The fault lifts (2 is acknowledged); 1 still waits, but a held connection waits for a
        // fire of its own past the lift.
        table.replace(2, with: Self.healthy(2, toward: Self.y))
        let lifted = await kernel.scanStuck(api, limit: 10, dryRun: false, namespaces: nil)
        #expect(lifted.isEmpty)
        #expect(table.cookies == [1, 2, 3])
        // The same listing judged with nothing carried: 1 alone is stuck, and it is ended.
        let fresh = await Self.kernel([nil: table]).scanStuck(api, limit: 10, dryRun: false, namespaces: nil)
        #expect(fresh.compactMap(\.report?.socketsEnded) == [1])
        #expect(table.cookies == [2, 3])
    }

    /// A stuck scan's limit is the budget's grant, which is charged only what ended (as a reap's is):
    /// a refused destroy in the first namespace leaves the second its room.
    @Test func aStuckScansRefusedDestroyTakesNoneOfItsLimit() async throws {
        let files = try NamespaceFiles(2)
        defer { files.remove() }
        let api = Self.pool("api", [Self.x, Self.y])
        let first = FakeNamespaceSockets([Self.waiting(1, toward: Self.x), Self.healthy(3, toward: Self.y)], refusing: [1])
        let second = FakeNamespaceSockets([Self.waiting(2, toward: Self.x), Self.healthy(4, toward: Self.y)])
        let kernel = Self.kernel([files.paths[0]: first, files.paths[1]: second])
        let reports = await kernel.scanStuck(api, limit: 1, dryRun: false, namespaces: .paths(files.paths))
        #expect(first.cookies == [1, 3])
        #expect(second.cookies == [4], "the refused destroy ended nothing: the limit of 1 was still there")
        #expect(reports.compactMap(\.report?.socketsEnded) == [0, 1])
        #expect(reports.compactMap(\.report?.socketsLeftByLimit) == [0, 0])
    }
}

/// Empty files standing for namespace files: each is a namespace identity of its own (device and
/// inode) to KernelWorkers, whose workers in these tests enter nothing.
struct NamespaceFiles {
    let directory: URL
    let paths: [String]

    init(_ count: Int) throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("conn-reaper-netns-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let directory = directory
        paths = try (0..<count).map { index in
            let path = directory.appendingPathComponent("ns\(index)").path
            guard FileManager.default.createFile(atPath: path, contents: nil) else { throw CocoaError(.fileWriteUnknown) }
            return path
        }
    }

    func remove() { try? FileManager.default.removeItem(at: directory) }
}

/// One namespace's sockets as sock_diag shows them to a purge: dumps filtered by the query,
/// destroys by cookie (ENOENT when gone). No socket is the agent's own.
final class FakeNamespaceSockets: SocketTable, Sendable {
    private let sockets: Mutex<[DiagnosedSocket]>
    /// Cookies whose destroy the kernel refuses (EPERM), every time.
    private let refused: Set<UInt64>

    init(_ sockets: [DiagnosedSocket], refusing refused: Set<UInt64> = []) {
        self.sockets = Mutex(sockets)
        self.refused = refused
    }

    var cookies: [UInt64] { sockets.withLock { $0.map(\.id.cookie) } }

    func replace(_ cookie: UInt64, with socket: DiagnosedSocket) {
        sockets.withLock { sockets in
            for index in sockets.indices where sockets[index].id.cookie == cookie { sockets[index] = socket }
        }
    }

    func sockets(matching query: SocketQuery, signal: SocketDiagnostics.CountSignal?) throws(SystemCallError) -> SocketDiagnostics.Dump {
        let listed = sockets.withLock { sockets in
            sockets.filter { socket in
                query.transports.contains(socket.transport) && query.states.contains(socket.state)
                    && query.destinations.contains { $0.matches(address: socket.remote.address, port: socket.remote.port) }
            }
        }
        return SocketDiagnostics.Dump(sockets: listed, interrupted: false)
    }

    func socket(
        exactly id: SocketID, family: SocketFamily, transport: TransportProtocol, includeTCPInfo: Bool
    ) throws(SystemCallError) -> DiagnosedSocket? {
        sockets.withLock { sockets in sockets.first { $0.transport == transport && $0.local == id.source && $0.remote == id.destination } }
    }

    func listeningEndpoints() throws(SystemCallError) -> [Endpoint] { [] }

    func destroy(_ targets: [DiagnosedSocket]) throws(SystemCallError) -> [Acknowledgement] {
        sockets.withLock { sockets in
            targets.map { target in
                if refused.contains(target.id.cookie) { return .failed(.notPermitted) }
                guard let index = sockets.firstIndex(where: { $0.id == target.id }) else { return .failed(.noSuchFileOrDirectory) }
                sockets.remove(at: index)
                return .done
            }
        }
    }

    func ownSocketInodes() -> Set<UInt32> { [] }
}
