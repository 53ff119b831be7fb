import Foundation
import Testing
import TestSupport

/// The dashboard's "Your devices" panel in two headless Chromium browsers (two cookie stores: two
/// devices) logged in as one user through `session-cluster demo`: each lists both sessions, and
/// "Log out other devices" in one logs the other out.
@Suite(.serialized, .tags(.integration)) struct DevicesBrowserTests {
    @Test func twoBrowsersSeeEachOtherAndLogOutOtherDevicesEndsTheOther() throws {
        let (first, second) = (try DashboardBrowserTests.launchBrowser(), try DashboardBrowserTests.launchBrowser())
        defer {
            first.close()
            second.close()
        }
        let (demo, base) = try DashboardBrowserTests.startDemo(["--strategy", "replicate", "--nodes", "3"])
        defer { demo.stop(signal: SIGTERM, timeout: 20) }  // SIGKILL would orphan its nodes
        let client = CurlClient()
        let up = waitUntil(timeout: 30) {
            guard demo.isRunning else { return true }
            guard let nodes = DashboardBrowserTests.clusterStatus(client, base)?["nodes"] as? [[String: Any]] else { return false }
            return nodes.count == 3 && nodes.allSatisfy { $0["health"] as? String == "up" }
        }
        try #require(up && demo.isRunning, "the demo's nodes did not all come up within 30 s; its output:\n\(demo.output)")

        let pages = [try first.open("\(base)/"), try second.open("\(base)/")]
        let devices = "document.querySelectorAll('#device-list li').length"
        #expect(try pages[0].waitFor("document.getElementById('devices').hidden"), "no panel before a login")
        for page in pages {
            try DashboardBrowserTests.typeName(page, "ada")
            try DashboardBrowserTests.click(page, "login")
            #expect(try page.waitFor("document.getElementById('user').textContent === 'ada'"))
        }
        // The page refreshes the panel with the session every 2 s.
        for (i, page) in pages.enumerated() {
            let both = try page.waitFor("!document.getElementById('devices').hidden && \(devices) === 2", timeout: 15)
            let shown = try page.evaluate(devices) as? Int ?? -1
            #expect(both, "browser \(i + 1) lists \(shown) devices, not 2")
            #expect(try page.evaluate("document.querySelectorAll('#device-list li[data-current=\"true\"]').length") as? Int == 1)
            #expect(try page.evaluate("document.querySelectorAll('#device-list [data-action=revoke]').length") as? Int == 1)
            #expect(try DashboardBrowserTests.text(page, "#device-list li[data-current=\"true\"] .badge") == "this device")
        }

        try DashboardBrowserTests.click(pages[1], "revoke-others")
        #expect(try pages[1].waitFor("document.getElementById('status').textContent.startsWith('Logged out 1 other device')"))
        #expect(try pages[1].waitFor("\(devices) === 1"), "the second browser lists only itself")
        let loggedOut = try pages[0].waitFor(
            "document.getElementById('user').textContent === 'nobody' && document.getElementById('devices').hidden", timeout: 15)
        let shownUser = try DashboardBrowserTests.text(pages[0], "#user") ?? "?"
        #expect(loggedOut, "the first browser shows user \(shownUser)")
        #expect(try DashboardBrowserTests.text(pages[1], "#user") == "ada", "the second browser stays logged in")
        // The events arrive from whichever node delivered them: the revoke's among them.
        let eventShown = try pages[1].waitFor(
            "document.querySelector('#event-list li[data-kind=\"invalidated\"]') !== null", timeout: 15)
        let eventList = try DashboardBrowserTests.text(pages[1], "#event-list") ?? ""
        #expect(eventShown, "the second browser shows the invalidated event; it shows: \(eventList)")
    }
}
