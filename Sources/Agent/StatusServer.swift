import Foundation
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore

/// /metrics (Prometheus text), /healthz (loops alive), /readyz (config loaded, first probe round
/// done), /status (JSON: pools, backends, states, last change, last reap). Bounded under abuse: see
/// StatusConnectionLimits.
public enum StatusServer {
    /// `onBound` runs once the listener is bound: from then on the endpoints answer.
    public static func make(
        listen: String, port: Int, state: AgentState, metrics: AgentMetrics, logger: Logger,
        onBound: @escaping @Sendable () -> Void = {}
    ) -> some ApplicationProtocol {
        let router = Router()
        router.get("metrics") { _, _ -> Response in
            text(try await onStatusThread { metrics.exposition() }, contentType: "text/plain; version=0.0.4; charset=utf-8")
        }
        router.get("healthz") { _, _ -> Response in
            state.loopsAlive() ? text("ok\n") : text("probe loops stalled\n", status: .serviceUnavailable)
        }
        router.get("readyz") { _, _ -> Response in
            state.ready() ? text("ready\n") : text("first probe round not done\n", status: .serviceUnavailable)
        }
        router.get("status") { _, _ -> Response in
            let body = try await onStatusThread { () -> String in
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                encoder.dateEncodingStrategy = .iso8601
                return String(decoding: (try? encoder.encode(state.status())) ?? Data("{}".utf8), as: UTF8.self)
            }
            return text(body + "\n", contentType: "application/json")
        }
        return Application(
            router: router,
            server: .http1(configuration: .init(idleTimeout: .nanoseconds(Int64(StatusConnectionLimits.requestDeadline.seconds * 1e9)))),
            configuration: .init(
                address: .hostname(listen, port: port), serverName: nil,
                availableConnectionsDelegate: MaximumAvailableConnections(StatusConnectionLimits.maximumConnections)),
            onServerRunning: { _ in onBound() },
            eventLoopGroupProvider: .shared(StatusConnectionLimits.eventLoops),
            logger: logger)
    }

    /// Builds a body on the endpoint's own thread: however many requests come, rendering them takes
    /// at most that one thread, never the task pool the reap pipeline runs on.
    static func onStatusThread<Body: Sendable>(_ render: @escaping @Sendable () -> Body) async throws -> Body {
        try await StatusConnectionLimits.eventLoops.next().submit(render).get()
    }

    static func text(_ body: String, status: HTTPResponse.Status = .ok, contentType: String = "text/plain; charset=utf-8") -> Response {
        Response(status: status, headers: [.contentType: contentType], body: .init(byteBuffer: ByteBuffer(string: body)))
    }
}
