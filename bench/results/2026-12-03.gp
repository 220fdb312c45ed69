set terminal pngcairo font 'DejaVu Sans,11' size 960,540 noenhanced
set output 'bench/results/2026-12-03.png'
set title "Cache-hit blob throughput, 256 MiB layer, loopback, 2026-12-03"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set ylabel "MiB/s"
set yrange [0:*]
set grid ytics
set key top right
set xtics nomirror
plot 'bench/results/2026-12-03.dat' using 2:xtic(1) title '1 client', \
     '' using 3 title '8 parallel clients', \
     '' using ($0-1.0/6):2:(sprintf("%.0f",$2)) with labels offset 0,0.8 notitle, \
     '' using ($0+1.0/6):3:(sprintf("%.0f",$3)) with labels offset 0,0.8 notitle
