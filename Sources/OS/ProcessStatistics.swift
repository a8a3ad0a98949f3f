#if canImport(Glibc)
    import Glibc
#endif

/// What the process_* metrics report, read from /proc for this process at the moment of a scrape.
public struct ProcessStatistics: Sendable, Equatable {
    public var cpuSeconds: Double
    public var residentBytes: Int
    /// Unix time the process started.
    public var startTime: Double
    public var openFileDescriptors: Int
    public var maxFileDescriptors: Int

    public static func current() -> ProcessStatistics? {
        guard let stat = FileStatus.readText("/proc/self/stat"), let statm = FileStatus.readText("/proc/self/statm"),
            let system = FileStatus.readText("/proc/stat")
        else { return nil }
        var limit = rlimit()
        getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
        return parse(
            stat: stat, statm: statm, systemStat: system, ticksPerSecond: sysconf(Int32(_SC_CLK_TCK)),
            pageSize: sysconf(Int32(_SC_PAGESIZE)), openFileDescriptors: countOpenFileDescriptors(), maxFileDescriptors: Int(limit.rlim_cur)
        )
    }

    /// The pure part: /proc/self/stat's fields after the command name (which may hold spaces and
    /// parentheses, hence the last ")"), statm's resident pages, /proc/stat's boot time.
    static func parse(
        stat: String, statm: String, systemStat: String, ticksPerSecond: Int, pageSize: Int, openFileDescriptors: Int,
        maxFileDescriptors: Int
    ) -> ProcessStatistics? {
        guard let close = stat.lastIndex(of: ")") else { return nil }
        // Fields from the state on: state is field 3 of proc(5), so utime (14) is index 11 here.
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        let residentPages = statm.split(separator: " ").dropFirst().first.flatMap { Int($0) }
        let bootTime = systemStat.split(separator: "\n").first { $0.hasPrefix("btime ") }.flatMap { Double($0.dropFirst(6)) }
        guard fields.count > 19, let user = Double(fields[11]), let system = Double(fields[12]), let started = Double(fields[19]),
            let residentPages, let bootTime, ticksPerSecond > 0
        else { return nil }
        let ticks = Double(ticksPerSecond)
        return ProcessStatistics(
            cpuSeconds: (user + system) / ticks, residentBytes: residentPages * pageSize, startTime: bootTime + started / ticks,
            openFileDescriptors: openFileDescriptors, maxFileDescriptors: maxFileDescriptors)
    }

    static func countOpenFileDescriptors() -> Int {
        guard let directory = opendir("/proc/self/fd") else { return 0 }
        defer { closedir(directory) }
        var count = 0
        while let entry = readdir(directory) {
            let isDot = withUnsafeBytes(of: entry.pointee.d_name) { $0.first == UInt8(ascii: ".") }
            if !isDot { count += 1 }
        }
        return count - 1  // the descriptor opendir holds
    }

    /// Unix time now, as Prometheus timestamps want it.
    public static func unixTime() -> Double {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
    }
}
