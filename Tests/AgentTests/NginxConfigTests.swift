@testable import Agent
import NetworkAddress
import Testing

@Suite struct NginxConfigTests {
    let files: [String: String] = [
        "/etc/nginx/nginx.conf": """
        load_module /usr/lib/nginx/modules/ngx_stream_module.so;
        events { worker_connections 1024; }
        stream {
            upstream kube_apiserver {
                least_conn;
                server 10.0.0.1:6443;
                server 10.0.0.2:6443 max_fails=3 fail_timeout=30s;
                server [fd00::3]:6443 backup;
                server 10.0.0.9:6443 down;
            }
            server { listen 127.0.0.1:6443; proxy_pass kube_apiserver; proxy_timeout 10m; proxy_connect_timeout 1s; }
        }
        http {
            include conf.d/*.conf;  # upstreams live here
        }
        """,
        "/etc/nginx/conf.d/a.conf": """
        upstream web {
            server web.internal;          # resolved, port 80 by default
            server unix:/run/app.sock;    # no peer to reap
            server "10.0.1.2:8080" weight=2;
        }
        server { listen 80; location / { proxy_pass http://web; proxy_read_timeout 30m; } }
        """,
    ]

    func parse() throws -> [NginxUpstream] {
        let directives = try NginxConfigParser.parse(path: "/etc/nginx/nginx.conf", readFile: { files[$0] })
        return try NginxUpstreams.upstreams(in: directives) { host in
            host == "web.internal" ? [IPAddress("10.0.1.1")!, IPAddress("fd00::1:1")!] : []
        }
    }

    @Test func findsStreamAndHTTPUpstreams() throws {
        // The include glob needs real files; without them the http block holds no upstream.
        let upstreams = try parse()
        let apiserver = try #require(upstreams.first { $0.name == "kube_apiserver" })
        #expect(apiserver.context == .stream)
        #expect(apiserver.servers.count == 4)
        #expect(apiserver.servers[2].backup)
        #expect(apiserver.servers[3].down)
        #expect(apiserver.activeEndpoints.map(\.description) == ["10.0.0.1:6443", "10.0.0.2:6443", "[fd00::3]:6443"])
    }

    @Test func httpServersDefaultToPort80AndNamesResolve() throws {
        let directives = try NginxConfigParser.parse(path: "/etc/nginx/conf.d/a.conf", readFile: { files[$0] })
        let wrapped = [NginxDirective(name: "http", arguments: [], children: directives, file: "x", line: 1)]
        let upstreams = try NginxUpstreams.upstreams(in: wrapped) { host in
            host == "web.internal" ? [IPAddress("10.0.1.1")!, IPAddress("fd00::1:1")!] : []
        }
        #expect(upstreams.map(\.name) == ["web"])
        #expect(upstreams[0].activeEndpoints.map(\.description) == ["10.0.1.1:80", "[fd00::1:1]:80", "10.0.1.2:8080"])
    }

    @Test(arguments: [
        ("stream { upstream u { server 10.0.0.1; } }", "stream upstream servers need a port"),
        ("http { upstream u { server nowhere.invalid:80; } }", "does not resolve"),
        ("http { upstream u { server 10.0.0.1:80 }", "missing ';' after 'server 10.0.0.1:80'"),
        ("http { upstream u { server 10.0.0.1:80; }", "missing '}'"),
        ("http { upstream u { server 10.0.0.1:80; } } }", "unexpected '}'"),
        ("http { upstream u { server \"10.0.0.1:80; } }", "unterminated quote"),
        ("include /nonexistent/only.conf;", "matches no file"),
        // Split as a destination is (HostPort): text after the bracket is not silently dropped.
        ("stream { upstream u { server [fd00::1; } }", "'[fd00::1': missing ']' after IPv6 address"),
        ("stream { upstream u { server [fd00::1]6443; } }", "'[fd00::1]6443': expected ':PORT' after ']'"),
    ])
    func reportsProblemsWithTheirLine(config: String, message: String) {
        #expect {
            let directives = try NginxConfigParser.parse(path: "/n.conf", readFile: { $0 == "/n.conf" ? config : nil })
            _ = try NginxUpstreams.upstreams(in: directives) { _ in [] }
        } throws: { error in
            "\(error)".contains(message) && "\(error)".hasPrefix("/n.conf")
        }
    }

    @Test func tokenizerKeepsQuotedWordsAndDropsComments() throws {
        let directives = try NginxConfigParser.parse(path: "/t.conf", readFile: { _ in "a 'b c' \"d;e\" # f g;\n;" })
        #expect(directives.count == 1)
        #expect(directives[0].name == "a")
        #expect(directives[0].arguments == ["b c", "d;e"])
        #expect(directives[0].line == 1)
    }
}
