/*
 * ferry test guest: memory checker (scripts/build-test-guest puts it in
 * the initramfs as /bin/memcheck, built with gcc -static).
 *
 * It fills N MiB with pages whose every 64-bit word is derived from
 * (page number, generation, word index), and keeps going over them: each
 * page is first verified against the generation it was last written with,
 * then rewritten with the current generation. A page that lost a write
 * (an old generation's content, as after a live migration that missed a
 * dirty page) or holds anything else fails. The generation of each page is
 * kept twice: in its first word and in a separate table, so a corrupted
 * table is caught too.
 *
 * Prints on stdout (the serial console in the test guest):
 *   ferry-guest memcheck start pages=P
 *   ferry-guest memcheck gen=G pages=P bad=B checked=C     (about every second)
 *   ferry-guest memcheck FAIL page=N gen=G word=W want=X got=Y
 * gen is the pass over all pages now running, bad the count of bad pages
 * found so far, checked the count of page verifications so far.
 *
 * Usage: memcheck MIB [RATE]
 *   MIB   the memory to check (>= 1)
 *   RATE  MiB per second to rewrite at most (0 or none: as fast as it can)
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define PAGE 4096u
#define WORDS (PAGE / 8u)
#define MAX_FAIL_LINES_PER_SECOND 16

static uint64_t mix(uint64_t x)
{
	/* splitmix64's finalizer: every input bit changes every output bit. */
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

static uint64_t word(uint64_t page, uint64_t gen, uint64_t i)
{
	return mix((page << 24) ^ (gen << 12) ^ i ^ (gen << 44));
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	char *end = NULL;
	unsigned long mib, rate = 0;
	double started;
	uint64_t written = 0;
	size_t pages, p;
	uint64_t *mem, *gens, gen = 1, bad = 0, checked = 0;
	double next_report, fail_window = 0;
	int fail_lines = 0;

	if (argc < 2 || argc > 3 || (errno = 0, mib = strtoul(argv[1], &end, 10), errno) || *end ||
	    mib == 0 || mib > (1ul << 20) ||
	    (argc == 3 && ((errno = 0, rate = strtoul(argv[2], &end, 10), errno) || *end))) {
		fprintf(stderr, "usage: memcheck MIB [RATE]   (MIB 1 .. 1048576, RATE MiB/s, 0 = no limit)\n");
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	pages = (size_t)mib * (1024u * 1024u / PAGE);
	mem = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE,
		   -1, 0);
	gens = calloc(pages, sizeof *gens);
	if (mem == MAP_FAILED || gens == NULL) {
		printf("ferry-guest memcheck FAIL cannot allocate %lu MiB: %s\n", mib, strerror(errno));
		return 1;
	}
	/* Generation 0: the first pass writes without verifying. */
	printf("ferry-guest memcheck start pages=%zu\n", pages);
	started = now();
	next_report = started + 1.0;
	for (;;) {
		for (p = 0; p < pages; p++) {
			uint64_t *w = mem + p * WORDS, g = gens[p];
			unsigned i;
			if (g != 0) {
				int page_bad = 0;
				for (i = 0; i < WORDS; i++) {
					uint64_t want = i == 0 ? g : word(p, g, i);
					if (w[i] != want) {
						double t = now();
						if (t - fail_window >= 1.0) {
							fail_window = t;
							fail_lines = 0;
						}
						if (fail_lines++ < MAX_FAIL_LINES_PER_SECOND)
							printf("ferry-guest memcheck FAIL page=%zu gen=%llu word=%u want=%016llx got=%016llx\n",
							       p, (unsigned long long)g, i, (unsigned long long)want,
							       (unsigned long long)w[i]);
						page_bad = 1;
						break;
					}
				}
				bad += page_bad;
				checked++;
			}
			w[0] = gen;
			for (i = 1; i < WORDS; i++)
				w[i] = word(p, gen, i);
			gens[p] = gen;
			if ((p & 255) == 255 && rate != 0) {
				/* 256 pages = 1 MiB: sleep while ahead of RATE. */
				double due = started + (double)++written / (double)rate, t = now();
				if (due > t) {
					struct timespec ts = { (time_t)(due - t),
							       (long)((due - t - (double)(time_t)(due - t)) * 1e9) };
					nanosleep(&ts, NULL);
				}
			}
			if ((p & 255) == 255 && now() >= next_report) {
				printf("ferry-guest memcheck gen=%llu pages=%zu bad=%llu checked=%llu\n",
				       (unsigned long long)gen, pages, (unsigned long long)bad,
				       (unsigned long long)checked);
				next_report = now() + 1.0;
			}
		}
		gen++;
	}
}
