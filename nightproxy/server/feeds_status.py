"""Hosted feeds on the status page and in ``/metrics``.

Per feed, a person sees the newest build of each project per platform, a build matrix (per
project and platform, which of the last 14 days got an upload: the Windows wheels that stopped
three days ago show at a glance), the projects that went quiet, and what the next prune will
delete and why. The metrics carry the same facts: files, bytes and the last upload per
project, and deletions per reason.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime
from html import escape

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from nightproxy.hosted.feed import HostedFeed
from nightproxy.hosted.status import (
    build_matrix,
    matrix_days,
    newest_builds,
    stale_projects,
    totals,
)

#: Planned deletions shown on the page; the rest are counted (``nightproxy feed prune
#: --dry-run`` lists them all).
SHOWN_DELETIONS = 200


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _ago(when: datetime, now: datetime) -> str:
    seconds = max(0.0, (now - when).total_seconds())
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _table(table_id: str, head: list[str], rows: list[str], empty: str) -> str:
    body = "".join(rows) or f"<tr><td colspan='{len(head)}'>{escape(empty)}</td></tr>"
    header = "".join(f"<th>{escape(h)}</th>" for h in head)
    return f"<table id='{table_id}'><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>"


async def feed_section(feed: HostedFeed) -> str:
    """One feed's section of the status page."""
    snapshot, planned = await feed.plan()
    records = snapshot.files()
    now = feed.clock()
    name = escape(feed.name)
    count = sum(t.files for t in totals(records))
    size = sum(t.bytes for t in totals(records))
    newest = [
        f"<tr><td>{escape(b.project)}</td><td>{escape(b.platform)}</td>"
        f"<td>{escape(b.version)}</td><td>{_ago(b.upload_time, now)} ago</td>"
        f"<td>{escape(b.uploader)}</td></tr>"
        for b in newest_builds(records)
    ]
    days = matrix_days(now.date())
    matrix_head = ["Project", "Platform", *(d.strftime("%m-%d") for d in days)]
    matrix = []
    for row in build_matrix(records, now):
        cells = "".join(
            f"<td class='{'built' if n else 'none'}' title='{day.isoformat()}: {n} uploads'>"
            f"{'&#9632;' if n else '&middot;'}</td>"
            for day, n in zip(days, row.uploads, strict=True)
        )
        matrix.append(
            f"<tr><td>{escape(row.project)}</td><td>{escape(row.platform)}</td>{cells}</tr>"
        )
    stale = [
        f"<tr><td>{escape(s.project)}</td><td>{_ago(s.last_upload, now)} ago</td>"
        f"<td>{_ago(now - s.threshold, now)}</td></tr>"
        for s in stale_projects(records, feed.settings.rules, now)
    ]
    deletions = [
        f"<tr><td>{escape(d.file.project)}</td><td>{escape(d.file.filename)}</td>"
        f"<td>{escape(d.reason)}</td></tr>"
        for d in planned[:SHOWN_DELETIONS]
    ]
    more = (
        f"<p>and {len(planned) - SHOWN_DELETIONS} more "
        "(<code>nightproxy feed prune --dry-run</code> lists them all)</p>"
        if len(planned) > SHOWN_DELETIONS
        else ""
    )
    return f"""<section class="hosted-feed" id="feed-{name}">
<h2>Hosted feed {name}</h2>
<p>{count} files, {_size(size)}; uploads go to <code>/feeds/{name}/</code>.</p>
<h3>Newest builds</h3>
{
        _table(
            f"feed-{name}-newest",
            ["Project", "Platform", "Newest version", "Uploaded", "By"],
            newest,
            "No upload yet.",
        )
    }
<h3>Build matrix, last {len(days)} days (UTC)</h3>
{_table(f"feed-{name}-matrix", matrix_head, matrix, "No upload yet.")}
<h3>Quiet projects (no upload for half their dev_max_age)</h3>
{_table(f"feed-{name}-stale", ["Project", "Last upload", "Quiet after"], stale, "None.")}
<h3>The next prune deletes</h3>
{_table(f"feed-{name}-prune", ["Project", "File", "Why"], deletions, "Nothing.")}
{more}
</section>
"""


async def feeds_html(feeds: dict[str, HostedFeed]) -> str:
    """Every hosted feed's section, for the status page ('' without hosted feeds)."""
    return "".join([await feed_section(feed) for feed in feeds.values()])


#: The status page's style for the build matrix.
FEEDS_STYLE = (
    ".build-matrix td.built, td.built { color: #060; text-align: center; } "
    "td.none { color: #bbb; text-align: center; }"
)


class FeedCollector(Collector):
    """Files, bytes and last upload per project, deletions per reason, of every hosted feed.

    Read from each feed's last listing at scrape time (never waiting on storage).
    """

    def __init__(self, feeds: Mapping[str, HostedFeed]) -> None:
        self.feeds = feeds

    def collect(self) -> Iterator[Metric]:
        files = GaugeMetricFamily(
            "nightproxy_feed_files", "Files a hosted feed lists", labels=["feed", "project"]
        )
        size = GaugeMetricFamily(
            "nightproxy_feed_bytes",
            "Bytes of the files a hosted feed lists",
            labels=["feed", "project"],
        )
        last = GaugeMetricFamily(
            "nightproxy_feed_last_upload_timestamp_seconds",
            "Unix time of a project's newest upload to a hosted feed",
            labels=["feed", "project"],
        )
        # A gauge, not a counter: it is the feed's own total, the same seen from every worker
        # (the workers' metrics are merged by summing counters and taking the largest gauge).
        deleted = GaugeMetricFamily(
            "nightproxy_feed_deleted_files",
            "Files a hosted feed has deleted so far, by reason (retention, manual, replaced, "
            "missing)",
            labels=["feed", "reason"],
        )
        for name, feed in self.feeds.items():
            snapshot = feed.last_snapshot
            if snapshot is None:
                continue
            for total in totals(snapshot.files()):
                labels = [name, total.project]
                files.add_metric(labels, total.files)
                size.add_metric(labels, total.bytes)
                last.add_metric(labels, total.last_upload.timestamp())
            for reason, count in sorted(snapshot.deletions.items()):
                deleted.add_metric([name, reason], count)
        yield from (files, size, last, deleted)
