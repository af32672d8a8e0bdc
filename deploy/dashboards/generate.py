#!/usr/bin/env python3
"""Writes the Grafana dashboards of deploy/dashboards/ (the JSON files are what Grafana loads
and what tests/dashboards.rs runs against a real InfluxDB; this script keeps their layout,
datasource wiring and variables uniform). Edit here, run `python3 deploy/dashboards/generate.py`,
commit both; scripts/check-deploy fails when the JSON files are not this script's output.

Every query is raw InfluxQL with Grafana's macros ($timeFilter, $__interval, $__interval_ms)
and variables used only as `=~ /^$var$/` (multi-value, "All" included). Every panel and
variable reads the datasource chosen by the variable `datasource` (type influxdb), so the
dashboards work with the provisioned datasource or with an existing install's.
"""

import json
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
DS = {"type": "influxdb", "uid": "${datasource}"}
BOUNDS = ["0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "inf"]
# Per second, whatever $__interval Grafana picks: count per bucket × 1000 / bucket length in ms.
PER_SECOND = "* 1000 / $__interval_ms"
STATUS_CLASSES = [("2xx", "2"), ("3xx", "3"), ("4xx", "4"), ("5xx", "5")]


def target(query, alias=None, fmt="time_series", hide=False):
    t = {"datasource": DS, "rawQuery": True, "query": query, "resultFormat": fmt}
    if alias:
        t["alias"] = alias
    if hide:
        t["hide"] = True
    return t


def expression(math):
    """A Grafana server-side math expression over the panel's other queries (`$A / $B`):
    InfluxQL 1.x cannot divide one query's result by another's (a FROM of two subqueries
    keeps only the first one's fields)."""
    return {"datasource": {"type": "__expr__", "uid": "__expr__"}, "type": "math", "expression": math}


class Dashboard:
    def __init__(self, uid, title, description, tags, variables, time_from="now-1h"):
        self.uid = uid
        self.title = title
        self.description = description
        self.tags = tags
        self.variables = variables
        self.time_from = time_from
        self.panels = []
        self.x = 0
        self.y = 0

    def row(self, title):
        if self.x:
            self.x, self.y = 0, self.y + 8
        self.panels.append(
            {"type": "row", "title": title, "collapsed": False, "panels": [],
             "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}}
        )
        self.y += 1

    def panel(self, kind, title, description, targets, unit="short", width=12, height=8, interval=None,
              options=None, field_defaults=None, extra=None):
        if self.x + width > 24:
            self.x, self.y = 0, self.y + height
        defaults = {"unit": unit}
        if kind == "timeseries":
            defaults["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never",
                                  "spanNulls": False}
        defaults.update(field_defaults or {})
        panel = {
            "type": kind,
            "title": title,
            "description": description,
            "datasource": DS,
            "gridPos": {"h": height, "w": width, "x": self.x, "y": self.y},
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": options if options is not None else {
                "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                "tooltip": {"mode": "multi", "sort": "desc"},
            },
            "targets": [dict(t, refId=chr(ord("A") + i)) for i, t in enumerate(targets)],
        }
        if interval:
            panel["interval"] = interval
        panel.update(extra or {})
        self.panels.append(panel)
        self.x += width
        if self.x >= 24:
            self.x, self.y = 0, self.y + height

    def json(self):
        for i, panel in enumerate(self.panels, start=1):
            panel["id"] = i
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": self.tags,
            "editable": True,
            "graphTooltip": 1,
            "timezone": "browser",
            "refresh": "30s",
            "schemaVersion": 39,
            "version": 1,
            "time": {"from": self.time_from, "to": "now"},
            "annotations": {"list": []},
            "links": [{"type": "dashboards", "tags": ["logmill"], "asDropdown": True, "title": "logmill"}],
            "templating": {"list": [datasource_variable()] + self.variables},
            "panels": self.panels,
        }


def datasource_variable():
    return {"name": "datasource", "label": "InfluxDB", "type": "datasource", "query": "influxdb",
            "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": []}


def tag_variable(name, label, measurement, key=None):
    query = f'SHOW TAG VALUES FROM "{measurement}" WITH KEY = "{key or name}"'
    return {"name": name, "label": label, "type": "query", "datasource": DS, "query": query,
            "definition": query, "multi": True, "includeAll": True, "refresh": 2, "sort": 1, "hide": 0,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "options": [], "regex": ""}


def router_compatible():
    d = Dashboard(
        "logmill-router-compat", "Router (compatible)",
        "The old Deis router dashboard's panels, on the deis_router_* series (one point per access line; "
        "values in seconds and bytes despite the _ms names). Works unchanged on data the old fluentd wrote.",
        ["logmill", "deis", "router"],
        [tag_variable("app", "App", "deis_router_response_time_ms")],
    )
    m = '"deis_router_response_time_ms"'
    app = '"app" =~ /^$app$/'
    d.row("Requests")
    d.panel("timeseries", "Requests per second by app",
            "count(value) of deis_router_response_time_ms: one point per request.",
            [target(f'SELECT count("value") {PER_SECOND} FROM {m} WHERE $timeFilter AND {app} '
                    f'GROUP BY time($__interval), "app" fill(0)', "$tag_app")], unit="reqps")
    d.panel("timeseries", "Requests per second (aggregate)", "Every app together.",
            [target(f'SELECT count("value") {PER_SECOND} FROM {m} WHERE $timeFilter AND {app} '
                    f'GROUP BY time($__interval) fill(0)', "Aggregate")], unit="reqps")
    d.panel("timeseries", "Status codes (aggregate)", "Requests per second by status class.",
            [target(f'SELECT count("value") {PER_SECOND} FROM {m} WHERE $timeFilter AND {app} '
                    f'AND "status_code" =~ /^{digit}/ GROUP BY time($__interval) fill(0)', label)
             for label, digit in STATUS_CLASSES], unit="reqps", width=24)
    d.row("Upstream response time")
    d.panel("timeseries", "Upstream response time by app",
            "Mean $upstream_response_time (first attempt of a retried request; 0 for `-`).",
            [target(f'SELECT mean("value") FROM {m} WHERE $timeFilter AND {app} '
                    f'GROUP BY time($__interval), "app" fill(null)', "$tag_app")], unit="s")
    d.panel("timeseries", "Upstream response times (aggregate)", "99th percentile, min, max and mean.",
            [target(f'SELECT {fn} FROM {m} WHERE $timeFilter AND {app} GROUP BY time($__interval) fill(null)', alias)
             for fn, alias in [('percentile("value", 99)', "99th"), ('min("value")', "min"), ('max("value")', "max"),
                               ('mean("value")', "mean")]], unit="s")
    d.panel("timeseries", "Request time by app", "Mean $request_time (deis_router_request_time_ms).",
            [target('SELECT mean("value") FROM "deis_router_request_time_ms" WHERE $timeFilter AND '
                    f'{app} GROUP BY time($__interval), "app" fill(null)', "$tag_app")], unit="s")
    d.panel("timeseries", "Bytes sent by app", "$bytes_sent per second (deis_router_bytes_sent).",
            [target(f'SELECT sum("value") {PER_SECOND} FROM "deis_router_bytes_sent" WHERE $timeFilter AND '
                    f'{app} GROUP BY time($__interval), "app" fill(0)', "$tag_app")], unit="Bps")
    return d


def bucket_sums(family):
    return ", ".join(
        f'sum("{family}_bucket_le_{b}") AS "{"+Inf" if b == "inf" else b}"' for b in BOUNDS
    )


def router():
    d = Dashboard(
        "logmill-router", "Router",
        "Deis router traffic from router_requests: counts, bytes and latency per 10 s window, app, status, "
        "method and router node, aggregated by logmill. Percentile fields describe one window of one "
        "consumer; cluster-wide latency distributions come from the summable buckets (heatmaps).",
        ["logmill", "router"],
        [tag_variable("app", "App", "router_requests"),
         tag_variable("router_host", "Router node", "router_requests", "host")],
    )
    m = '"router_requests"'
    where = '$timeFilter AND "app" =~ /^$app$/ AND "host" =~ /^$router_host$/'
    # Windows are 10 s: a finer $__interval would split a window's point from its neighbours.
    iv = "10s"
    d.row("Traffic")
    d.panel("timeseries", "Requests per second by app", "sum(count) of router_requests.",
            [target(f'SELECT sum("count") {PER_SECOND} FROM {m} WHERE {where} '
                    f'GROUP BY time($__interval), "app" fill(0)', "$tag_app")], unit="reqps", interval=iv)
    d.panel("timeseries", "Requests per second by status class", "",
            [target(f'SELECT sum("count") {PER_SECOND} FROM {m} WHERE {where} AND "status_code" =~ /^{digit}/ '
                    f'GROUP BY time($__interval) fill(0)', label) for label, digit in STATUS_CLASSES],
            unit="reqps", interval=iv)
    d.panel("timeseries", "Error ratio (5xx)",
            "Share of requests answered 5xx: sum(count) of 5xx over sum(count) of all, per interval.",
            [target(f'SELECT sum("count") FROM {m} WHERE {where} AND "status_code" =~ /^5/ '
                    'GROUP BY time($__interval) fill(0)', "5xx", hide=True),
             target(f'SELECT sum("count") FROM {m} WHERE {where} GROUP BY time($__interval) fill(null)',
                    "requests", hide=True),
             expression("$A / $B")],
            unit="percentunit", interval=iv, field_defaults={"min": 0, "max": 1})
    d.panel("timeseries", "Bytes sent by app", "sum(bytes_sent) per second.",
            [target(f'SELECT sum("bytes_sent") {PER_SECOND} FROM {m} WHERE {where} '
                    f'GROUP BY time($__interval), "app" fill(0)', "$tag_app")], unit="Bps", interval=iv)
    for family, label in [("request_time", "Request time"), ("upstream_time", "Upstream time")]:
        upstream = family == "upstream_time"
        d.row(label + (" (upstream attempts summed; requests with `-` left out)" if upstream else ""))
        # The number of requests that have this time: every request for request_time, those
        # with an upstream time for upstream_time (the buckets count exactly those).
        counted = " + ".join(f'sum("{family}_bucket_le_{b}")' for b in BOUNDS) if upstream else 'sum("count")'
        d.panel("timeseries", f"{label}: mean by app", f"sum({family}_sum) / requests: the exact mean.",
                [target(f'SELECT sum("{family}_sum") / ({counted}) FROM {m} WHERE {where} '
                        f'GROUP BY time($__interval), "app" fill(null)', "$tag_app")], unit="s", interval=iv)
        d.panel("timeseries", f"{label}: p50 / p90 / p99 (worst window)",
                "The highest per-window percentile of any app, node and consumer: an upper bound, not a "
                "merged percentile (see the heatmap for the distribution).",
                [target(f'SELECT max("{family}_p50") AS "p50", max("{family}_p90") AS "p90", '
                        f'max("{family}_p99") AS "p99" FROM {m} WHERE {where} GROUP BY time($__interval) fill(null)',
                        "$col")], unit="s", interval=iv)
        d.panel("timeseries", f"{label}: p99 by app (worst window)", "",
                [target(f'SELECT max("{family}_p99") FROM {m} WHERE {where} '
                        f'GROUP BY time($__interval), "app" fill(null)', "$tag_app")], unit="s", interval=iv)
        d.panel("heatmap", f"{label}: distribution",
                "Requests per latency bucket (upper bound, seconds), summed over every app, node and consumer.",
                [target(f'SELECT {bucket_sums(family)} FROM {m} WHERE {where} GROUP BY time($__interval) fill(0)',
                        "$col")], interval=iv,
                options={"calculate": False, "rowsFrame": {"layout": "le"}, "yAxis": {"unit": "s"},
                         "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64},
                         "cellGap": 1, "tooltip": {"show": True, "yHistogram": True},
                         "legend": {"show": True}})
    d.row("Apps")
    d.panel("table", "Top apps", "Requests, bytes, 5xx and mean request time per app over the time range.",
            [target(f'SELECT sum("count") AS "requests", sum("bytes_sent") AS "bytes sent", '
                    f'sum("request_time_sum") / sum("count") AS "mean request time" FROM {m} WHERE {where} '
                    'GROUP BY "app"', fmt="table"),
             target(f'SELECT sum("count") AS "5xx" FROM {m} WHERE {where} AND "status_code" =~ /^5/ '
                    'GROUP BY "app"', fmt="table")],
            width=24, options={"showHeader": True, "sortBy": [{"displayName": "requests", "desc": True}]},
            extra={"transformations": [{"id": "merge", "options": {}},
                                       {"id": "organize", "options": {"excludeByName": {"Time": True}}}]})
    return d


def nodes():
    d = Dashboard(
        "logmill-nodes", "Nodes",
        "Host series in Telegraf's schema (cpu, mem, disk, diskio, net, netstat, system, processes) and the "
        "kubelet's kubernetes_* series, as logmill's agent collects them on every node.",
        ["logmill", "nodes"],
        [tag_variable("host", "Node", "system"),
         tag_variable("namespace", "Namespace", "kubernetes_pod_container")],
    )
    host = '"host" =~ /^$host$/'
    rate = "non_negative_derivative(max(\"{}\"), 1s)"
    d.row("CPU and load")
    d.panel("timeseries", "CPU usage", "100 − usage_idle of cpu-total.",
            [target(f'SELECT 100 - mean("usage_idle") FROM "cpu" WHERE $timeFilter AND "cpu" = \'cpu-total\' '
                    f'AND {host} GROUP BY time($__interval), "host" fill(null)', "$tag_host")],
            unit="percent", field_defaults={"min": 0, "max": 100})
    d.panel("timeseries", "Load (1 min) per CPU", "load1 / n_cpus.",
            [target(f'SELECT mean("load1") / mean("n_cpus") FROM "system" WHERE $timeFilter AND {host} '
                    'GROUP BY time($__interval), "host" fill(null)', "$tag_host")])
    d.panel("timeseries", "CPU time by state", "usage_user, usage_system, usage_iowait, usage_steal of cpu-total.",
            [target(f'SELECT mean("usage_user") AS "user", mean("usage_system") AS "system", '
                    f'mean("usage_iowait") AS "iowait", mean("usage_steal") AS "steal" FROM "cpu" '
                    f'WHERE $timeFilter AND "cpu" = \'cpu-total\' AND {host} GROUP BY time($__interval), "host" '
                    'fill(null)', "$tag_host $col")], unit="percent")
    d.panel("timeseries", "Processes", "Total, running and blocked processes.",
            [target(f'SELECT mean("total") AS "total", mean("running") AS "running", mean("blocked") AS "blocked" '
                    f'FROM "processes" WHERE $timeFilter AND {host} GROUP BY time($__interval), "host" fill(null)',
                    "$tag_host $col")])
    d.row("Memory and disk")
    d.panel("timeseries", "Memory used", "mem.used_percent (used = total − available).",
            [target(f'SELECT mean("used_percent") FROM "mem" WHERE $timeFilter AND {host} '
                    'GROUP BY time($__interval), "host" fill(null)', "$tag_host")],
            unit="percent", field_defaults={"min": 0, "max": 100})
    d.panel("timeseries", "Memory available and swap used", "",
            [target(f'SELECT mean("available") FROM "mem" WHERE $timeFilter AND {host} '
                    'GROUP BY time($__interval), "host" fill(null)', "$tag_host available"),
             target(f'SELECT mean("used") FROM "swap" WHERE $timeFilter AND {host} '
                    'GROUP BY time($__interval), "host" fill(null)', "$tag_host swap used")], unit="bytes")
    d.panel("timeseries", "Disk used", "disk.used_percent per mount point.",
            [target(f'SELECT last("used_percent") FROM "disk" WHERE $timeFilter AND {host} '
                    'GROUP BY time($__interval), "host", "path" fill(null)', "$tag_host $tag_path")],
            unit="percent", field_defaults={"min": 0, "max": 100})
    d.panel("timeseries", "Disk I/O", "Bytes read and written per second per device.",
            [target(f'SELECT {rate.format("read_bytes")} AS "read", {rate.format("write_bytes")} AS "write" '
                    f'FROM "diskio" WHERE $timeFilter AND {host} GROUP BY time($__interval), "host", "name" '
                    'fill(null)', "$tag_host $tag_name $col")], unit="Bps")
    d.row("Network")
    d.panel("timeseries", "Network traffic", "Bytes received and sent per second per interface.",
            [target(f'SELECT {rate.format("bytes_recv")} AS "in", {rate.format("bytes_sent")} AS "out" '
                    f'FROM "net" WHERE $timeFilter AND {host} GROUP BY time($__interval), "host", "interface" '
                    'fill(null)', "$tag_host $tag_interface $col")], unit="Bps")
    d.panel("timeseries", "TCP connections", "Established and TIME_WAIT sockets (netstat).",
            [target(f'SELECT mean("tcp_established") AS "established", mean("tcp_time_wait") AS "time_wait" '
                    f'FROM "netstat" WHERE $timeFilter AND {host} GROUP BY time($__interval), "host" fill(null)',
                    "$tag_host $col")])
    d.row("Kubelet")
    ns = '"namespace" =~ /^$namespace$/'
    d.panel("timeseries", "Node CPU (kubelet)", "kubernetes_node.cpu_usage_nanocores, in cores.",
            [target(f'SELECT mean("cpu_usage_nanocores") / 1000000000 FROM "kubernetes_node" WHERE $timeFilter '
                    f'AND {host} GROUP BY time($__interval), "node_name" fill(null)', "$tag_node_name")])
    d.panel("timeseries", "Node memory working set (kubelet)", "kubernetes_node.memory_working_set_bytes.",
            [target(f'SELECT mean("memory_working_set_bytes") FROM "kubernetes_node" WHERE $timeFilter AND {host} '
                    'GROUP BY time($__interval), "node_name" fill(null)', "$tag_node_name")], unit="bytes")
    d.panel("timeseries", "Container CPU", "kubernetes_pod_container.cpu_usage_nanocores, in cores.",
            [target(f'SELECT mean("cpu_usage_nanocores") / 1000000000 FROM "kubernetes_pod_container" '
                    f'WHERE $timeFilter AND {host} AND {ns} '
                    'GROUP BY time($__interval), "namespace", "pod_name", "container_name" fill(null)',
                    "$tag_namespace/$tag_pod_name/$tag_container_name")])
    d.panel("timeseries", "Container memory working set", "kubernetes_pod_container.memory_working_set_bytes.",
            [target(f'SELECT mean("memory_working_set_bytes") FROM "kubernetes_pod_container" '
                    f'WHERE $timeFilter AND {host} AND {ns} '
                    'GROUP BY time($__interval), "namespace", "pod_name", "container_name" fill(null)',
                    "$tag_namespace/$tag_pod_name/$tag_container_name")], unit="bytes")
    d.panel("timeseries", "Pod network", "kubernetes_pod_network bytes per second.",
            [target(f'SELECT {rate.format("rx_bytes")} AS "in", {rate.format("tx_bytes")} AS "out" '
                    f'FROM "kubernetes_pod_network" WHERE $timeFilter AND {host} AND {ns} '
                    'GROUP BY time($__interval), "namespace", "pod_name" fill(null)',
                    "$tag_namespace/$tag_pod_name $col")], unit="Bps", width=24)
    return d


def logmill():
    d = Dashboard(
        "logmill-self", "logmill",
        "logmill's own counters (logmill_* measurements: field value, tags host and labels, as Telegraf's "
        "internal input writes them) and nsqd's statistics (nsq_*).",
        ["logmill"],
        [],
    )
    rate = 'non_negative_derivative(max("value"), 1s)'

    def per_second(measurement, tags='"host"', alias="$tag_host"):
        return target(f'SELECT {rate} FROM "{measurement}" WHERE $timeFilter '
                      f'GROUP BY time($__interval), {tags} fill(null)', alias)

    d.row("Agents (per node)")
    d.panel("timeseries", "Lines read and shipped",
            "Log records read from files (logmill_lines_read_total), shipped to `logs` "
            "(logmill_records_shipped_total) and router points shipped to `metrics` "
            "(logmill_points_shipped_total), per second.",
            [per_second("logmill_lines_read_total", alias="$tag_host read"),
             per_second("logmill_records_shipped_total", alias="$tag_host records to logs"),
             per_second("logmill_points_shipped_total", alias="$tag_host points to metrics")], unit="cps")
    d.panel("timeseries", "Messages published", "NSQ messages nsqd acknowledged per second, by topic "
            "(logmill_messages_published_total).",
            [per_second("logmill_messages_published_total", '"host", "topic"', "$tag_host $tag_topic")],
            unit="cps")
    d.panel("timeseries", "Lag", "Bytes written to followed files and not read yet: all live files "
            "(logmill_files_lag_bytes) and the file furthest behind (logmill_file_lag_max_bytes).",
            [target('SELECT max("value") FROM "logmill_files_lag_bytes" WHERE $timeFilter '
                    'GROUP BY time($__interval), "host" fill(null)', "$tag_host all files"),
             target('SELECT max("value") FROM "logmill_file_lag_max_bytes" WHERE $timeFilter '
                    'GROUP BY time($__interval), "host" fill(null)', "$tag_host worst file")], unit="bytes")
    d.panel("timeseries", "Rejected lines", "Lines rejected per second by reason (logmill_lines_rejected_total).",
            [per_second("logmill_lines_rejected_total", '"host", "reason"', "$tag_host $tag_reason")], unit="cps")
    d.panel("timeseries", "Publish retries and failures", "logmill_nsq_publish_retries_total, "
            "logmill_nsq_publishes_failed_total.",
            [per_second("logmill_nsq_publish_retries_total", alias="$tag_host retries"),
             per_second("logmill_nsq_publishes_failed_total", alias="$tag_host failed")], unit="cps")
    d.panel("timeseries", "Files followed", "logmill_files_watched; logmill_tail_polling is 1 where inotify "
            "ran out and files are polled.",
            [target('SELECT max("value") FROM "logmill_files_watched" WHERE $timeFilter '
                    'GROUP BY time($__interval), "host" fill(null)', "$tag_host"),
             target('SELECT max("value") FROM "logmill_tail_polling" WHERE $timeFilter '
                    'GROUP BY time($__interval), "host" fill(null)', "$tag_host polling")])
    d.row("NSQ")
    d.panel("timeseries", "Channel depth", "Messages waiting per channel (memory + disk), per nsqd. A channel "
            "nobody reads (telegraf's old `consumer`) grows without bound: delete it.",
            [target('SELECT max("depth") FROM "nsq_channel" WHERE $timeFilter '
                    'GROUP BY time($__interval), "server_host", "topic", "channel" fill(null)',
                    "$tag_server_host $tag_topic/$tag_channel")])
    d.panel("timeseries", "In flight", "Messages delivered and not finished yet, per channel.",
            [target('SELECT max("inflight_count") FROM "nsq_channel" WHERE $timeFilter '
                    'GROUP BY time($__interval), "server_host", "topic", "channel" fill(null)',
                    "$tag_server_host $tag_topic/$tag_channel")])
    d.panel("timeseries", "Topic depth and disk backlog", "Topic depth and the part of it on disk.",
            [target('SELECT max("depth") AS "depth", max("backend_depth") AS "on disk" FROM "nsq_topic" '
                    'WHERE $timeFilter GROUP BY time($__interval), "server_host", "topic" fill(null)',
                    "$tag_server_host $tag_topic $col")])
    d.panel("timeseries", "Requeues and timeouts", "Per channel, per second.",
            [target('SELECT non_negative_derivative(max("requeue_count"), 1s) AS "requeued", '
                    'non_negative_derivative(max("timeout_count"), 1s) AS "timed out" FROM "nsq_channel" '
                    'WHERE $timeFilter GROUP BY time($__interval), "server_host", "topic", "channel" fill(null)',
                    "$tag_topic/$tag_channel $col")], unit="cps")
    d.row("Consumers")
    d.panel("timeseries", "InfluxDB write latency",
            "Mean milliseconds from submission to InfluxDB's answer per interval "
            "(logmill_consume_write_latency_ms_total / logmill_consume_writes_total), and the last write's.",
            [target('SELECT non_negative_difference(max("value")) FROM "logmill_consume_write_latency_ms_total" '
                    'WHERE $timeFilter GROUP BY time($__interval), "host" fill(null)', "$tag_host", hide=True),
             target('SELECT non_negative_difference(max("value")) FROM "logmill_consume_writes_total" '
                    'WHERE $timeFilter GROUP BY time($__interval), "host" fill(null)', "$tag_host", hide=True),
             expression("$A / $B"),
             target('SELECT max("value") FROM "logmill_consume_write_latency_last_ms" WHERE $timeFilter '
                    'GROUP BY time($__interval), "host" fill(null)', "$tag_host last")], unit="ms")
    d.panel("timeseries", "InfluxDB retries and drops", "Write attempts retried (logmill_influx_retries_total) and "
            "points InfluxDB refused (logmill_influx_points_dropped_total), per second.",
            [per_second("logmill_influx_retries_total", alias="$tag_host retries"),
             per_second("logmill_influx_points_dropped_total", alias="$tag_host dropped")], unit="cps")
    d.panel("timeseries", "Points written", "logmill_influx_points_written_total per second.",
            [per_second("logmill_influx_points_written_total")], unit="cps")
    d.panel("timeseries", "Messages held", "NSQ messages a consumer holds until their points are durable "
            "(logmill_consume_messages_held).",
            [target('SELECT max("value") FROM "logmill_consume_messages_held" WHERE $timeFilter '
                    'GROUP BY time($__interval), "host", "topic" fill(null)', "$tag_host $tag_topic")])
    d.panel("timeseries", "Requeued and invalid", "Messages given back by reason "
            "(logmill_consume_messages_requeued_total) and invalid lines by reason (logmill_consume_lines_invalid_total).",
            [per_second("logmill_consume_messages_requeued_total", '"host", "reason"', "$tag_host requeued $tag_reason"),
             per_second("logmill_consume_lines_invalid_total", '"host", "topic", "reason"',
                        "$tag_host invalid $tag_topic $tag_reason")], unit="cps")
    d.panel("timeseries", "Collector problems", "Host, kubelet and nsqd collection problems by input and reason "
            "(logmill_collect_problems_total).",
            [per_second("logmill_collect_problems_total", '"host", "input", "reason"',
                        "$tag_host $tag_input $tag_reason")], unit="cps")
    return d


DASHBOARDS = {
    "router-compatible.json": router_compatible,
    "router.json": router,
    "nodes.json": nodes,
    "logmill.json": logmill,
}


def render(build):
    return json.dumps(build().json(), indent=2, ensure_ascii=False) + "\n"


def main():
    check = sys.argv[1:] == ["--check"]
    stale = []
    for name, build in DASHBOARDS.items():
        path = HERE / name
        text = render(build)
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"deploy/dashboards: {', '.join(stale)} differ from generate.py's output: "
              "run python3 deploy/dashboards/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
