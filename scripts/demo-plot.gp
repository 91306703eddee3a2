# Draws the brownout demo's timeline (scripts/demo.sh runs it after the demo):
#
#   gnuplot -e "dir='OUT_DIR'; out='OUT_DIR/brownout.png'" scripts/demo-plot.gp
#
# Reads OUT_DIR/brownout-timeline.tsv (one line per 100 ms of the run, by the
# requests' start: per side p50/p99 latency in ms, successes, failures and
# local rejections per second, breaker state 0 closed / 1 open / 2 half-open,
# the limit in force) and OUT_DIR/brownout-phases.tsv (start, end, name).
# Columns of the timeline: 1 t_s, 2 phase, then 7 per side in the order
# resil (3-9), static (10-16), naive (17-23): p50, p99, ok/s, failed/s,
# rejected/s, breaker, limit.

if (!exists("dir")) dir = "."
if (!exists("out")) out = dir . "/brownout.png"
tl = dir . "/brownout-timeline.tsv"
ph = dir . "/brownout-phases.tsv"

set terminal pngcairo size 1200,900 font "DejaVu Sans,9" noenhanced
set output out
set datafile separator "\t"
set datafile missing "-"
set key outside right top vertical font ",8" samplen 2 width -2
set grid ytics lc rgb "#dddddd"
set xtics 5 format ""
set lmargin 10
set rmargin 17

stats tl using 1 nooutput
tmax = STATS_max + 0.1
set xrange [0:tmax]

c_resil = "#1b7837"
c_static = "#2166ac"
c_naive = "#b2182b"

# Phase boundaries and names, on a 0..1 second axis of every panel.
set y2range [0:1]
unset y2tics

set multiplot layout 4,1 title "resil brownout demo: resil (adaptive limit, throttling, probes) vs static limit vs naive client, per 100 ms"

# 1. Latency callers saw.
set tmargin 2
set bmargin 0.5
set logscale y
set yrange [0.005:60000]
set ytics ("10 us" 0.01, "100 us" 0.1, "1 ms" 1, "10 ms" 10, "100 ms" 100, "1 s" 1000, "10 s" 10000)
set ylabel "latency (p99 solid, p50 dotted)"
plot ph using 1:(0):(0):(1) axes x1y2 with vectors nohead dt 3 lc rgb "#888888" notitle, \
     ph using (($1+$2)/2):(0.93):3 axes x1y2 with labels font ",9" notitle, \
     tl using 1:4 with steps lw 1.5 lc rgb c_resil title "resil p99", \
     tl using 1:11 with steps lw 1.2 lc rgb c_static title "static p99", \
     tl using 1:18 with steps lw 1.5 lc rgb c_naive title "naive p99", \
     tl using 1:3 with steps dt 3 lc rgb c_resil title "resil p50", \
     tl using 1:17 with steps dt 3 lc rgb c_naive title "naive p50"
unset logscale y
set ytics auto
set yrange [0:*]
set tmargin 0.5

# 2. Successes per second.
set ylabel "successes / s"
plot ph using 1:(0):(0):(1) axes x1y2 with vectors nohead dt 3 lc rgb "#888888" notitle, \
     tl using 1:5 with steps lw 1.5 lc rgb c_resil title "resil", \
     tl using 1:12 with steps lw 1.2 lc rgb c_static title "static", \
     tl using 1:19 with steps lw 1.5 lc rgb c_naive title "naive"

# 3. Local rejections per second (the naive client has none) and failures.
set ylabel "rejected / s (solid)\nfailed / s (dotted)"
plot ph using 1:(0):(0):(1) axes x1y2 with vectors nohead dt 3 lc rgb "#888888" notitle, \
     tl using 1:7 with steps lw 1.5 lc rgb c_resil title "resil rejected", \
     tl using 1:14 with steps lw 1.2 lc rgb c_static title "static rejected", \
     tl using 1:6 with steps dt 3 lc rgb c_resil title "resil failed", \
     tl using 1:20 with steps dt 3 lc rgb c_naive title "naive failed"

# 4. Breaker state as a band per resil side.
set bmargin 3
set xtics 5 format "%g"
set xlabel "seconds"
set ylabel "breaker"
set yrange [0:2]
set ytics ("static" 0.5, "resil" 1.5)

brk(s) = s == 0 ? 0x4dac26 : (s == 1 ? 0xd01c8b : 0xf1b6da)
plot tl using ($1+0.05):(1.5):(0.05):(0.4):(brk($8)) with boxxyerror fs solid noborder lc rgb variable notitle, \
     tl using ($1+0.05):(0.5):(0.05):(0.4):(brk($15)) with boxxyerror fs solid noborder lc rgb variable notitle, \
     NaN with boxes fs solid lc rgb "#4dac26" title "closed", \
     NaN with boxes fs solid lc rgb "#d01c8b" title "open", \
     NaN with boxes fs solid lc rgb "#f1b6da" title "half-open"
unset multiplot
