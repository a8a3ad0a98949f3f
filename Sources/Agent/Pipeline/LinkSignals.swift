import Logging
import NetworkAddress
import OS
import Routing
import ServiceLifecycle

/// rtnetlink's link and neighbour news in the agent's own network namespace, turned into early
/// signals: a backend's neighbour entry failing (nothing on its link answers ARP/NDP for it), or the
/// only interface toward it losing its carrier. Read on a thread of its own (the reads block).
/// The agent changes nothing on the host: it listens, and looks routes up as `ip route get` does.
public struct LinkSignalService: Service {
    let state: AgentState
    let executor: ReapExecutor
    let logger: Logger

    public init(state: AgentState, executor: ReapExecutor, logger: Logger) {
        self.state = state
        self.executor = executor
        self.logger = logger
    }

    /// How long one read waits: how soon a stop is noticed.
    static let readWait: Int32 = 200

    public func run() async throws {
        let executor = executor, state = state, logger = logger
        await ThreadLoop.run("link and neighbour signals", logger: logger) { stopped throws(SystemCallError) in
            let listener: RouteWatch, lookups: RouteWatch
            do {
                listener = try RouteWatch(listening: true)
                lookups = try RouteWatch(listening: false)
            } catch {
                logger.warning("link and neighbour signals off: rtnetlink refused", metadata: ["error": "\(error)"])
                return
            }
            while !stopped() {
                guard let (events, _) = try? listener.next(waitingUpTo: Self.readWait) else { return }
                for event in events {
                    for (key, signal, detail) in Self.signals(for: event, in: state.configuration, route: { try? lookups.route(to: $0) }) {
                        executor.earlySignal(key, signal, detail: detail)
                    }
                }
            }
        }
    }

    /// Which backends an announcement names, and how. Only pools in the agent's own namespace that
    /// watch for early signals count: another namespace's links and neighbours are not seen here.
    static func signals(
        for event: RouteEvent, in configuration: AgentConfiguration, route: (IPAddress) -> Route?
    ) -> [(BackendKey, EarlyDetection.Signal, String)] {
        let pools = configuration.pools.filter { $0.watchesRetransmissions && configuration.namespaces(of: $0) == nil }
        var found: [(BackendKey, EarlyDetection.Signal, String)] = []
        switch event {
        case .neighbour(let address, let interface, let neighbourState):
            guard neighbourState.isFailed else { return [] }
            for pool in pools {
                for backend in pool.backends where backend.address == address {
                    found.append((BackendKey(pool: pool.name, backend: backend), .neighbour, "\(address) FAILED on interface \(interface)"))
                }
            }
        case .link(let interface, let name, let carrier):
            guard !carrier else { return [] }
            var routes: [IPAddress: Route?] = [:]
            for pool in pools {
                for backend in pool.backends {
                    let chosen = routes[backend.address] ?? route(backend.address)
                    routes[backend.address] = chosen
                    // Only the one interface toward it: a multipath route has another way.
                    guard let chosen, chosen.interface == interface else { continue }
                    found.append(
                        (BackendKey(pool: pool.name, backend: backend), .carrier, "\(name ?? "interface \(interface)") lost its carrier"))
                }
            }
        }
        return found
    }
}
