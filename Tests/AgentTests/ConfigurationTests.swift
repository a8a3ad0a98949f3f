import Agent
import Conntrack
import Durations
import Health
import NetworkAddress
import Testing

@Suite struct YAMLConfigurationTests {
    let valid = """
        listen: 127.0.0.1:9747
        pools:
          - name: apiserver
            backends: ["10.0.0.1:6443", "10.0.0.2:6443", "[fd00::3]:6443"]
            protocols: [tcp]
            stuck_after: 0s
            probe:
              type: https
              port: 6443
              path: /readyz
              expect_status: [200]
              interval: 1s
              timeout: 500ms
              rise: 2
              fall: 2
              tls: { server_name: kubernetes, insecure_skip_verify: true }
        """

    @Test func conntrackZonesAreZeroUnlessNamedAndBadOnesAreRefused() throws {
        let base = """
            pools:
              - name: api
                backends: ["10.0.0.1:6443"]
            """
        #expect(try YAMLConfigReader.configuration(yaml: base, file: "c.yaml").pools[0].conntrackZones == .standard)
        let two = try YAMLConfigReader.configuration(yaml: base + "\n    conntrack_zones: [0, 7]", file: "c.yaml")
        #expect(two.pools[0].conntrackZones == .only([0, 7]))
        let every = try YAMLConfigReader.configuration(yaml: base + "\n    conntrack_zones: all", file: "c.yaml")
        #expect(every.pools[0].conntrackZones == .all)
        for bad in ["[70000]", "[]", "seven", "[-1]"] {
            #expect(throws: ConfigurationError.self, "conntrack_zones: \(bad)") {
                try YAMLConfigReader.configuration(yaml: base + "\n    conntrack_zones: \(bad)", file: "c.yaml")
            }
        }
    }

    @Test func readsTheDocumentedExample() throws {
        let configuration = try YAMLConfigReader.configuration(yaml: valid, file: "c.yaml")
        #expect(configuration.listen.description == "127.0.0.1:9747")
        let pool = try #require(configuration.pools.first)
        #expect(pool.name == "apiserver")
        #expect(pool.backends.map(\.description) == ["10.0.0.1:6443", "10.0.0.2:6443", "[fd00::3]:6443"])
        #expect(pool.probe.kind == .https)
        #expect(pool.probe.port == 6443)
        #expect(pool.probe.path == "/readyz")
        #expect(pool.interval == .seconds(1))
        #expect(pool.probe.timeout == .milliseconds(500))
        #expect(pool.probe.tls.serverName == "kubernetes")
        #expect(pool.probe.tls.insecureSkipVerify)
    }

    @Test func defaultsApplyWhenKeysAreLeftOut() throws {
        let configuration = try YAMLConfigReader.configuration(
            yaml: "pools:\n  - name: a\n    backends: [\"10.0.0.1:80\"]\n", file: "c.yaml")
        #expect(configuration.listen.description == "127.0.0.1:9747")
        #expect(configuration.pools[0].protocols == [.tcp])
        #expect(configuration.pools[0].probe.kind == .tcp)
        #expect(configuration.pools[0].rise == 2 && configuration.pools[0].fall == 2)
        #expect(!configuration.reapWhenAllDown)
    }

    @Test(arguments: [
        ("pools:\n  - name: a\n    backends: [\"10.0.0.1\"]\n", "pools[0].backends[0]", "has no port"),
        ("pools:\n  - name: a\n    backends: [\"10.0.0.1:80\"]\n    probe: { intervl: 1s }\n", "pools[0].probe.intervl", "unknown key"),
        (
            "pools:\n  - name: a\n    backends: [\"10.0.0.1:80\"]\n    probe: { interval: 1x }\n", "pools[0].probe.interval",
            "'1x' is not a duration"
        ),
        (
            "pools:\n  - name: a\n    backends: [\"10.0.0.1:80\"]\n    probe: { type: icmp }\n", "pools[0].probe.type",
            "'icmp' is not one of tcp, http, https"
        ),
        ("pools:\n  - name: a\n    backends: [\"10.0.0.1:80\"]\n    probe: { rise: 0 }\n", "pools[0].probe.rise", "from 1 to 100"),
        (
            "pools:\n  - name: a\n    backends: [\"10.0.0.1:80\"]\n    probe: { interval: 1s, timeout: 2s }\n", "pools[0].probe.timeout",
            "at most the interval"
        ),
        (
            "pools:\n  - name: a\n    backends: [\"10.0.0.1:80\"]\n  - name: a\n    backends: [\"10.0.0.2:80\"]\n", "pools[1].name",
            "used by another pool"
        ),
        ("pools:\n  - name: a\n    backends: []\n", "pools[0].backends", "at least one backend"),
        (
            "pools:\n  - name: a\n    backends: [\"10.0.0.1:80\"]\n    protocols: [sctp]\n", "pools[0].protocols[0]",
            "'sctp' is not one of tcp, udp"
        ),
        ("listen: nowhere\npools: []\n", "listen", "not an IPv4 or IPv6 address"),
        (
            "pools:\n  - name: a\n    backends: [\"10.0.0.1:80\"]\n    probe: { type: https, tls: { ca_file: /nonexistent/ca.crt } }\n",
            "pools[0].probe.tls.ca_file", "not a readable file"
        ),
        ("pools: [\n", "", "not valid YAML"),
        ("dry_run: maybe\npools: []\n", "dry_run", "is not true or false"),
        ("netns: some\npools: []\n", "netns", "is not 'all' or a list"),
        ("netns: []\npools: []\n", "netns", "name at least one namespace"),
        ("pools:\n  - name: a\n    backends: [\"10.0.0.1:80\"]\n    netns: [run/netns/x]\n", "pools[0].netns[0]", "names no namespace"),
        ("pools:\n  - name: a\n    backends: [\"10.0.0.1:80\"]\n    netns: [\"..\"]\n", "pools[0].netns[0]", "names no namespace"),
        ("log_level: loud\npools: []\n", "log_level", "is not one of trace, debug, info, notice, warning, error, critical"),
        ("pools:\n  - name: a\n    backends: [\"10.0.0.1:80\"]\n    rebalance: sometimes\n", "pools[0].rebalance", "is not true or false"),
        ("pools:\n  - name: a\n    backends: [\"10.0.0.1:80\"]\n    heartbeat: often\n", "pools[0].heartbeat", "is not true or false"),
        ("pools:\n  - name: a\n    backends: [\"10.0.0.1:80\"]\n    rebalance: [true]\n", "pools[0].rebalance", "expected a single value"),
        (
            "pools:\n  - name: a\n    backends: [\"10.0.0.1:80\"]\n    rebalance_tolerance: 0%\n", "pools[0].rebalance_tolerance",
            "not a percentage from 1% to 100%"
        ),
        (
            "pools:\n  - name: a\n    backends: [\"10.0.0.1:80\"]\n    rebalance_tolerance: 101%\n", "pools[0].rebalance_tolerance",
            "not a percentage from 1% to 100%"
        ),
        (
            "pools:\n  - name: a\n    backends: [\"10.0.0.1:80\"]\n    rebalance_tolerance: lots\n", "pools[0].rebalance_tolerance",
            "not a percentage"
        ),
        (
            "pools:\n  - name: a\n    backends: [\"10.0.0.1:80\"]\n    rebalance_rate: 0\n", "pools[0].rebalance_rate",
            "not a number above 0"
        ),
        (
            "pools:\n  - name: a\n    backends: [\"10.0.0.1:80\"]\n    probe: { type: tcp, reuse: true }\n", "pools[0].probe.reuse",
            "only for http and https probes"
        ),
        (
            "pools:\n  - name: a\n    backends: [\"10.0.0.1:80\"]\n    probe: { type: http, reuse: often }\n", "pools[0].probe.reuse",
            "is not true or false"
        ),
        (
            "pools:\n  - name: a\n    backends: [\"10.0.0.1:80\"]\n    probe: { type: http, reconnect_every: 5 }\n",
            "pools[0].probe.reconnect_every", "only used with reuse: true"
        ),
        (
            "pools:\n  - name: a\n    backends: [\"10.0.0.1:80\"]\n    probe: { type: http, reuse: true, reconnect_every: 0 }\n",
            "pools[0].probe.reconnect_every", "not a whole number from 1 to 10000"
        ),
    ])
    func errorsNameTheKey(yaml: String, key: String, message: String) {
        #expect {
            try YAMLConfigReader.configuration(yaml: yaml, file: "c.yaml")
        } throws: { error in
            guard let error = error as? ConfigurationError else { return false }
            return error.key == key && error.description.contains(message) && error.description.hasPrefix("c.yaml")
        }
    }

    @Test func readsProbeReuseAndItsReconnectEvery() throws {
        let plain = try YAMLConfigReader.configuration(yaml: valid, file: "c.yaml").pools[0].probe
        #expect(!plain.reuse && plain.reconnectEvery == ProbeSpec.defaultReconnectEvery)
        let yaml = "pools:\n  - name: a\n    backends: [\"10.0.0.1:80\"]\n    probe: { type: https, reuse: true, reconnect_every: 20 }\n"
        let probe = try YAMLConfigReader.configuration(yaml: yaml, file: "c.yaml").pools[0].probe
        #expect(probe.reuse && probe.reconnectEvery == 20)
        let defaulted = yaml.replacing(", reconnect_every: 20", with: "")
        #expect(try YAMLConfigReader.configuration(yaml: defaulted, file: "c.yaml").pools[0].probe.reconnectEvery == 10)
    }

    @Test func readsTheLogLevel() throws {
        let yaml = "log_level: debug\npools:\n  - name: a\n    backends: [\"10.0.0.1:80\"]\n"
        #expect(try YAMLConfigReader.configuration(yaml: yaml, file: "c.yaml").logLevel == .debug)
        #expect(try YAMLConfigReader.configuration(yaml: valid, file: "c.yaml").logLevel == .info)
    }

    @Test func readsRebalancingOffByDefaultAndItsTolerance() throws {
        let plain = try YAMLConfigReader.configuration(yaml: "pools:\n  - name: a\n    backends: [\"10.0.0.1:80\"]\n", file: "c.yaml")
        #expect(plain.pools[0].rebalance == false && plain.pools[0].rebalanceTolerance == 20)
        for (text, percent) in [("15%", 15.0), ("12.5%", 12.5), ("100%", 100.0), ("1", 1.0)] {
            let yaml = "pools:\n  - name: a\n    backends: [\"10.0.0.1:80\"]\n    rebalance: true\n    rebalance_tolerance: \(text)\n"
            let pool = try YAMLConfigReader.configuration(yaml: yaml, file: "c.yaml").pools[0]
            #expect(pool.rebalance && pool.rebalanceTolerance == percent && pool.rebalanceRate == nil)
        }
        let rated = "pools:\n  - name: a\n    backends: [\"10.0.0.1:80\"]\n    rebalance: on\n    rebalance_rate: 0.05\n"
        #expect(try YAMLConfigReader.configuration(yaml: rated, file: "c.yaml").pools[0].rebalanceRate == 0.05)
    }

    @Test func readsNetworkNamespaces() throws {
        let yaml = """
            netns: all
            pools:
              - name: a
                backends: ["10.0.0.1:80"]
              - name: b
                backends: ["10.0.0.2:53"]
                protocols: [udp]
                netns: [client, /proc/1/ns/net]
            """
        let configuration = try YAMLConfigReader.configuration(yaml: yaml, file: "c.yaml")
        #expect(configuration.netns == .all)
        #expect(configuration.usesOtherNamespaces)
        #expect(configuration.inspectsProcesses)
        #expect(configuration.namespaces(of: configuration.pools[0]) == .all)
        #expect(configuration.namespaces(of: configuration.pools[1]) == .paths(["/run/netns/client", "/proc/1/ns/net"]))
        let plain = try YAMLConfigReader.configuration(yaml: valid, file: "c.yaml")
        #expect(!plain.usesOtherNamespaces)
        #expect(!plain.inspectsProcesses)
        var named = plain
        named.netns = .paths(["/run/netns/client"])
        #expect(named.usesOtherNamespaces && !named.inspectsProcesses)
        #expect(plain.namespaces(of: plain.pools[0]) == nil)
    }

    @Test func errorsCarryTheLine() throws {
        let yaml = "pools:\n  - name: a\n    backends: [\"10.0.0.1:80\"]\n    probe:\n      fall: -1\n"
        #expect(throws: ConfigurationError.self) { try YAMLConfigReader.configuration(yaml: yaml, file: "c.yaml") }
        do {
            _ = try YAMLConfigReader.configuration(yaml: yaml, file: "c.yaml")
        } catch {
            #expect(error.line == 5)
            #expect(error.description == "c.yaml:5: pools[0].probe.fall: '-1' is not a whole number from 1 to 100")
        }
    }
}

@Suite struct DurationParsingTests {
    @Test(arguments: [("500ms", 0.5), ("1s", 1.0), ("1.5s", 1.5), ("2m", 120.0), ("0s", 0.0), ("0", 0.0), ("250us", 0.00025)])
    func parses(text: String, seconds: Double) throws {
        let duration = try #require(DurationParsing.parse(text))
        #expect(abs(duration.seconds - seconds) < 1e-9)
    }

    @Test(arguments: ["", "1", "s", "-1s", "1 day", "1x"])
    func rejects(text: String) {
        #expect(DurationParsing.parse(text) == nil)
    }

    /// Found by the values fuzz target: a duration past Int64 nanoseconds (about 292 years)
    /// trapped in the conversion, so `interval: 33333333333333s` ended the agent at load or reload.
    @Test func refusesADurationTooLongToHold() throws {
        #expect(DurationParsing.parse("33333333333333s") == nil)
        #expect(DurationParsing.parse("1e300h") == nil)
        #expect(DurationParsing.parse("292y") == nil)
        #expect(DurationParsing.parse("9000000000s") != nil)
        #expect {
            try DurationParsing.parseChecked("-33333333333333s")
        } throws: { ($0 as? DurationParsing.Failure)?.message == "'-33333333333333s' is negative: write 0 or a positive duration" }
        #expect {
            try DurationParsing.parseChecked("33333333333333s")
        } throws: { ($0 as? DurationParsing.Failure)?.message == "'33333333333333s' is too long (at most 292 years)" }
        let yaml = "pools:\n  - name: a\n    backends: [\"10.0.0.1:80\"]\n    probe: { interval: 33333333333333s }\n"
        #expect(throws: ConfigurationError.self) { try YAMLConfigReader.configuration(yaml: yaml, file: "c.yaml") }
    }

    @Test func formats() {
        #expect(DurationParsing.format(.seconds(2)) == "2s")
        #expect(DurationParsing.format(.milliseconds(150)) == "150ms")
        #expect(DurationParsing.format(.zero) == "0s")
    }
}
