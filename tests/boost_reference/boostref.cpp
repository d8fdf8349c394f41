// Boost.Random's own draws on boost::mt19937, called as Caffe calls them (caffe_rng_*
// in util/math_functions.cpp, caffe::shuffle in util/rng.hpp), for tests/test_rng.py.
// draws.npz was made with boost 1.74 (Debian's libboost1.74-dev), g++ -O2, x86-64:
//   g++ -O2 -o boostref boostref.cpp && python make_draws.py
// usage: boostref KIND SEED COUNT [A B]
//   KIND: gauss_f gauss_d (mean A, std B), unif_f unif_d (on [A, nextafter(B)]),
//   bern_f bern_d (p = A), shuffle (0 .. COUNT-1). Values on stdout (%a), the
//   number of 32-bit draws consumed on stderr.
#include <boost/random/mersenne_twister.hpp>
#include <boost/random/normal_distribution.hpp>
#include <boost/random/uniform_real.hpp>
#include <boost/random/bernoulli_distribution.hpp>
#include <boost/random/uniform_int.hpp>
#include <boost/random/variate_generator.hpp>
#include <boost/math/special_functions/next.hpp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cstdint>
#include <limits>
#include <vector>

struct Counting {
  BOOST_STATIC_CONSTANT(bool, has_fixed_range = false);
  typedef boost::mt19937::result_type result_type;
  boost::mt19937 g; unsigned long n = 0;
  explicit Counting(unsigned s) : g(s) {}
  static result_type min() { return 0u; }
  static result_type max() { return 0xFFFFFFFFu; }
  result_type operator()() { ++n; return g(); }
};

template <typename T> void gauss(Counting& e, int n, T mu, T s) {
  boost::normal_distribution<T> d(mu, s);
  boost::variate_generator<Counting*, boost::normal_distribution<T> > v(&e, d);
  for (int i = 0; i < n; ++i) { T x = v(); std::printf("%a\n", (double)x); }
}
template <typename T> void unif(Counting& e, int n, T a, T b) {
  boost::uniform_real<T> d(a, boost::math::nextafter<T>(b, std::numeric_limits<T>::max()));
  boost::variate_generator<Counting*, boost::uniform_real<T> > v(&e, d);
  for (int i = 0; i < n; ++i) { T x = v(); std::printf("%a\n", (double)x); }
}
template <typename T> void bern(Counting& e, int n, T p) {
  boost::bernoulli_distribution<T> d(p);
  boost::variate_generator<Counting*, boost::bernoulli_distribution<T> > v(&e, d);
  for (int i = 0; i < n; ++i) std::printf("%d\n", (int)v());
}
int main(int argc, char** argv) {
  const char* kind = argv[1];
  unsigned seed = (unsigned)std::strtoul(argv[2], 0, 10);
  int n = std::atoi(argv[3]);
  double a = argc > 4 ? std::atof(argv[4]) : 0, b = argc > 5 ? std::atof(argv[5]) : 1;
  Counting e(seed);
  if (!std::strcmp(kind, "gauss_f")) gauss<float>(e, n, (float)a, (float)b);
  else if (!std::strcmp(kind, "gauss_d")) gauss<double>(e, n, a, b);
  else if (!std::strcmp(kind, "unif_f")) unif<float>(e, n, (float)a, (float)b);
  else if (!std::strcmp(kind, "unif_d")) unif<double>(e, n, a, b);
  else if (!std::strcmp(kind, "bern_f")) bern<float>(e, n, (float)a);
  else if (!std::strcmp(kind, "bern_d")) bern<double>(e, n, a);
  else if (!std::strcmp(kind, "shuffle")) {
    std::vector<int> v(n); for (int i = 0; i < n; ++i) v[i] = i;
    for (std::ptrdiff_t i = n - 1; i > 0; --i) {
      boost::uniform_int<std::ptrdiff_t> d(0, i);
      std::swap(v[i], v[d(e)]);
    }
    for (int i = 0; i < n; ++i) std::printf("%d\n", v[i]);
  }
  std::fprintf(stderr, "draws %lu\n", e.n);
  return 0;
}
