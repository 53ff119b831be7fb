import Foundation
import SystemSupport
import TestSupport
import Testing

/// `ParentDeathGuard` (SystemSupport): a child it protects dies when this process dies,
/// however it dies. The kernel's part — closing every descriptor of a process that ends,
/// SIGKILL included — is simulated by `simulateParentDeath()`, which closes the same
/// descriptor; the SIGKILL itself is exercised end to end by `RedisDemoProcessTests`
/// (a SIGKILLed demo leaves no redis-server behind).
///
/// Every bound below is a backstop for a loaded machine: the watcher reacts at once.
@Suite(.serialized, .tags(.integration)) struct ParentDeathTests {
    /// `/bin/sleep 300`, in this process's group or leading its own.
    private func sleeper(ownProcessGroup: Bool = false) throws -> pid_t {
        try spawnProcess("/bin/sleep", ["300"], environment: [:], settings: SpawnSettings(ownProcessGroup: ownProcessGroup))
    }

    /// SIGKILL to `pid` (its group with `group`) and reaps it, unless it was reaped already: a reaped
    /// PID may belong to another process by now (PIDs wrap at 32,768 here).
    private func killUnlessReaped(_ pid: pid_t, group: Bool = false) {
        guard reapProcess(pid, block: false) == nil else { return }
        kill(group ? -pid : pid, SIGKILL)
        _ = reapProcess(pid, block: true)
    }

    /// Waits up to 10 s for `pid` (a child of this process) to end; reaps it. nil when it still runs.
    private func end(of pid: pid_t) -> ProcessEnd? {
        var end: ProcessEnd?
        _ = waitUntil(timeout: 10) {
            end = reapProcess(pid, block: false)
            return end != nil
        }
        return end
    }

    @Test func theProtectedChildIsKilledWhenTheParentDies() throws {
        let child = try sleeper()
        defer { killUnlessReaped(child) }
        let guardian = try ParentDeathGuard(protecting: child)
        #expect(ProcessTable.isAlive(guardian.watcherPID), "the watcher runs while the parent lives")
        #expect(reapProcess(child, block: false) == nil, "the guard leaves a living parent's child alone")

        guardian.simulateParentDeath()
        #expect(end(of: child) == .signaled(SIGKILL))
    }

    @Test func aDismissedGuardNeverKills() throws {
        let child = try sleeper()
        defer { killUnlessReaped(child) }
        let guardian = try ParentDeathGuard(protecting: child)
        let watcher = guardian.watcherPID
        guardian.dismiss()
        #expect(guardian.isDismissed)
        #expect(!ProcessTable.isAlive(watcher), "dismiss stops and reaps the watcher")
        guardian.simulateParentDeath()  // nothing left to close: no effect
        #expect(reapProcess(child, block: false) == nil, "the child still runs")
    }

    @Test func aGroupLeadersWholeGroupIsKilled() throws {
        // A shell leading its own group, with a sleep of its own in that group (Chromium and its helpers).
        let marker = "parent-death-group-\(UUID().uuidString)"
        let leader = try spawnProcess(
            "/bin/sh", ["-c", "sleep 300 & wait", marker], environment: ["PATH": "/usr/bin:/bin"],
            settings: SpawnSettings(ownProcessGroup: true))
        defer { killUnlessReaped(leader, group: true) }
        var grandchild: pid_t?
        #expect(waitUntil(timeout: 10) {
            grandchild = ProcessTable.children(of: leader).first
            return grandchild != nil
        }, "the leader started its sleep")
        let guardian = try ParentDeathGuard(protecting: leader, processGroup: true)

        guardian.simulateParentDeath()
        #expect(end(of: leader) == .signaled(SIGKILL))
        if let grandchild {
            #expect(waitUntil(timeout: 10) { !ProcessTable.isAlive(grandchild) }, "the leader's group went with it")
        }
    }

    @Test func aTestsChildProcessIsGuarded() throws {
        let child = try ChildProcess(URL(fileURLWithPath: "/bin/sleep"), ["300"])
        #expect(child.parentDeathGuard.protectedPID == child.pid)
        #expect(ProcessTable.isAlive(child.parentDeathGuard.watcherPID))

        child.parentDeathGuard.simulateParentDeath()
        #expect(child.waitForExit(timeout: 10) == .signaled(SIGKILL))
    }

    @Test func reapingAChildProcessDismissesItsGuard() throws {
        let child = try ChildProcess(URL(fileURLWithPath: "/bin/sh"), ["-c", "exit 3"])
        #expect(child.waitForExit(timeout: 10) == .exited(3))
        #expect(child.parentDeathGuard.isDismissed, "no watcher outlives the child it watched")
        #expect(!ProcessTable.isAlive(child.parentDeathGuard.watcherPID))
    }
}
